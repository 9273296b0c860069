"""The server side of commands: idempotent handlers behind `nats.micro` endpoints.

This module is the NATS side (endpoints, a task or a batch queue per request, the replies
sent back); `ledger.commands.answers` decides what each request is answered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import orjson
from nats.aio.client import Client
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, EndpointStats, Service, ServiceConfig
from pydantic import ValidationError

from eventstore import EventStore
from ledger import metrics
from ledger.commands.answers import DEFAULT_CONFLICT_RETRIES, Answers, Endpoint, Queued
from ledger.commands.batching import RequestQueue
from ledger.commands.envelope import (
    BatchHandler,
    CommandHandler,
    CommandT,
    Envelope,
    Outcome,
    ReplyT,
    error_envelope,
    one_at_a_time,
)
from ledger.context import RequestContext, from_headers

DEFAULT_MAX_IN_FLIGHT: Final = 64
"""Requests one endpoint of one instance handles at once; more wait in the subscription."""
DEFAULT_STOP_GRACE_S: Final = 10.0
"""How long `stop` lets requests in progress finish before cancelling them."""
_log = logging.getLogger(__name__)


class CommandService:
    """One instance of a named service: its command endpoints under one NATS queue group."""

    def __init__(
        self,
        nc: Client,
        store: EventStore,
        *,
        name: str,
        version: str,
        description: str | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        conflict_retries: int = DEFAULT_CONFLICT_RETRIES,
        stop_grace_s: float = DEFAULT_STOP_GRACE_S,
    ) -> None:
        assert max_in_flight >= 1, "an endpoint must be able to handle a request"
        self.name = name
        self._nc = nc
        self._config = ServiceConfig(
            name=name, version=version, description=description,
            queue_group=name, stats_handler=self._endpoint_stats,
        )
        self._max_in_flight = max_in_flight
        self._answers = Answers(store, conflict_retries)
        self._stop_grace_s = stop_grace_s
        self._endpoints: dict[str, Endpoint] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._queues: dict[str, RequestQueue[Queued]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._service: Service | None = None

    @property
    def instance_id(self) -> str:
        """This instance's id in `$SRV.PING/INFO/STATS` answers (only once started)."""
        assert self._service is not None, "the service is not started"
        return self._service.id

    def command(
        self, name: str, request_model: type[CommandT], reply_model: type[ReplyT]
    ) -> Callable[[CommandHandler[CommandT, ReplyT]], CommandHandler[CommandT, ReplyT]]:
        """Register the decorated handler as endpoint `name` on subject `<service>.<name>`."""
        assert self._service is None, "declare commands before start()"
        assert name not in self._endpoints, f"command {name!r} is declared twice"

        def register(handler: CommandHandler[CommandT, ReplyT]) -> CommandHandler[CommandT, ReplyT]:
            subject = f"{self.name}.{name}"
            self._endpoints[name] = Endpoint(name, subject, request_model, reply_model, handler)
            return handler

        return register

    def batch_command(
        self, name: str, request_model: type[CommandT], reply_model: type[ReplyT]
    ) -> Callable[[BatchHandler[CommandT, ReplyT]], BatchHandler[CommandT, ReplyT]]:
        """Like `command`, for a handler that decides many commands in one unit of work.

        The requests that arrive while a batch is being served are served together next,
        with their replies recorded in the same transaction (docs/command-batching.md). A
        batch that fails as a whole is served again one command at a time, so each command
        gets the answer it would have had alone."""
        assert self._service is None, "declare commands before start()"
        assert name not in self._endpoints, f"command {name!r} is declared twice"

        def register(handler: BatchHandler[CommandT, ReplyT]) -> BatchHandler[CommandT, ReplyT]:
            subject = f"{self.name}.{name}"
            self._endpoints[name] = Endpoint(
                name, subject, request_model, reply_model, one_at_a_time(handler), handler
            )
            self._queues[name] = RequestQueue(
                lambda batch: self._serve_batch(self._endpoints[name], batch),
                key=lambda queued: queued.command.command_id,
            )
            return handler

        return register

    async def start(self) -> None:
        """Subscribe every endpoint and the `$SRV` discovery subjects."""
        assert self._service is None, "the service is started already"
        service = Service(self._nc, self._config)
        await service.start()
        for endpoint in self._endpoints.values():
            self._slots[endpoint.name] = asyncio.Semaphore(self._max_in_flight)
            await service.add_endpoint(
                EndpointConfig(
                    name=endpoint.name, subject=endpoint.subject,
                    handler=self._receiver(endpoint),
                )
            )
        await self._nc.flush()
        self._service = service

    async def stop(self) -> None:
        """Stop taking requests, let those in progress finish (within the grace), then return."""
        if self._service is None:
            return
        await self._service.stop()
        self._service = None
        servers = {queue.server for queue in self._queues.values()}
        running = self._tasks | {server for server in servers if server is not None}
        if running:
            _, late = await asyncio.wait(running, timeout=self._stop_grace_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        for queue in self._queues.values():
            queue.clear()  # left unanswered: their senders time out and retry

    def _receiver(self, endpoint: Endpoint) -> Callable[[Request], Awaitable[None]]:
        """The micro handler of `endpoint`: hands each request to a task of its own."""
        # nats-py runs one subscription's callbacks one after another; handing each request
        # to its own task lets slow ones overlap, and the semaphore bounds how many do.
        async def receive(request: Request) -> None:
            await self._slots[endpoint.name].acquire()
            queued = self._parsed(endpoint, request)
            if queued is not None:
                self._queues[endpoint.name].put(queued)
                return
            task = asyncio.create_task(self._serve(endpoint, request))
            self._tasks.add(task)
            task.add_done_callback(lambda done: self._finished(endpoint, done))

        return receive

    def _finished(self, endpoint: Endpoint, task: asyncio.Task[None]) -> None:
        """Free the request's slot; log a reply that could not be sent."""
        self._tasks.discard(task)
        self._slots[endpoint.name].release()
        if not task.cancelled() and task.exception() is not None:
            _log.error("could not answer a request on %s", endpoint.subject,
                       exc_info=task.exception())

    def _endpoint_stats(self, stats: EndpointStats) -> dict[str, int]:
        """Outcome counts for `$SRV.STATS` (micro's own counters see only the hand-off)."""
        return dict(self._endpoints[stats.name].outcomes)

    def _parsed(self, endpoint: Endpoint, request: Request) -> Queued | None:
        """The request ready for its endpoint's queue; None when the endpoint takes no
        batches or the request is invalid (answered alone, with the reason)."""
        if endpoint.batch_handler is None:
            return None
        try:
            command = endpoint.request_model.model_validate_json(request.data)
        except ValidationError:
            return None
        context = from_headers(request.headers).caused_by(str(command.command_id))
        return Queued(request, command, context, time.perf_counter())

    async def _serve(self, endpoint: Endpoint, request: Request) -> None:
        """Answer one request, counting and timing its outcome."""
        started_s = time.perf_counter()
        outcome, envelope, answered_in = await self._answers.answer(endpoint, request)
        await self._respond(endpoint, request, outcome, envelope, answered_in, started_s)

    async def _serve_batch(self, endpoint: Endpoint, batch: Sequence[Queued]) -> None:
        """Answer a batch of requests: together when that works, else each alone. Every
        request's slot is freed, whatever happens (cancelled at shutdown, its sender
        hears nothing and retries)."""
        try:
            answers = await self._answers.answer_batch(endpoint, batch)
        except Exception:
            _log.exception("could not serve a batch on %s", endpoint.subject)
            answers = [("error", error_envelope("500", f"{endpoint.subject} failed"))] * len(batch)
        except BaseException:
            for _ in batch:
                self._slots[endpoint.name].release()
            raise
        for queued, (outcome, envelope) in zip(batch, answers, strict=True):
            try:
                await self._respond(endpoint, queued.request, outcome, envelope,
                                    queued.context, queued.started_s)  # fmt: skip
            except Exception:
                _log.exception("could not answer a request on %s", endpoint.subject)
            finally:
                self._slots[endpoint.name].release()

    async def _respond(
        self, endpoint: Endpoint, request: Request, outcome: Outcome, envelope: Envelope,
        answered_in: RequestContext, started_s: float,
    ) -> None:
        """Send the answer in the headers of the context it was answered in (the sender's
        correlation and trace, caused by the command), counting and timing its outcome."""
        endpoint.outcomes[outcome] += 1
        metrics.command_seconds.labels(endpoint=endpoint.subject, outcome=outcome).observe(
            time.perf_counter() - started_s
        )
        data = orjson.dumps(envelope)
        headers = answered_in.as_headers()
        if envelope["status"] == "error":
            await request.respond_error(envelope["code"], envelope["message"], data, headers)
        else:
            await request.respond(data, headers)
