"""The server side of commands: idempotent handlers behind `nats.micro` endpoints."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from nats.aio.client import Client
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, EndpointStats, Service, ServiceConfig
from pydantic import BaseModel, ValidationError

from eventstore import (
    ConcurrencyError,
    EventStore,
    StoreUnavailable,
    TransientConflict,
    UnitOfWork,
    record_replies,
    record_reply,
    recorded_replies,
    recorded_reply,
)
from eventstore.tracking import RecordedReply
from ledger import metrics
from ledger.commands.batching import RequestQueue
from ledger.commands.envelope import (
    BatchHandler,
    Command,
    CommandHandler,
    CommandNotReady,
    CommandRefused,
    CommandT,
    Envelope,
    Incoming,
    Outcome,
    ReplyT,
    describe_invalid,
    error_envelope,
    one_at_a_time,
    refusal_envelope,
)
from ledger.context import RequestContext, bound, from_headers

DEFAULT_MAX_IN_FLIGHT: Final = 64
"""Requests one endpoint of one instance handles at once; more wait in the subscription."""
DEFAULT_CONFLICT_RETRIES: Final = 5
"""Re-runs of a handler whose append met a concurrent writer, before it counts as an error."""
DEFAULT_STOP_GRACE_S: Final = 10.0
"""How long `stop` lets requests in progress finish before cancelling them."""
_log = logging.getLogger(__name__)


class _AnsweredElsewhere(Exception):
    """Another instance recorded a reply to this command first; roll this attempt back."""


_EXPECTED_BATCH_FAILURES: Final = (
    ConcurrencyError, TransientConflict, _AnsweredElsewhere, CommandNotReady, StoreUnavailable,
)
"""Why a batch may fail for one of its commands or for a moment: served one by one, quietly."""


@dataclass(frozen=True)
class _Endpoint:
    name: str
    subject: str
    request_model: type[Command]
    reply_model: type[BaseModel]
    handler: Callable[[Any, UnitOfWork], Awaitable[BaseModel]]
    batch_handler: BatchHandler[Any, Any] | None = None
    outcomes: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class _Queued:
    """A parsed request waiting for its batch."""

    request: Request
    command: Command
    context: RequestContext
    started_s: float


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
        assert conflict_retries >= 0, "retries cannot be negative"
        self.name = name
        self._nc = nc
        self._store = store
        self._config = ServiceConfig(
            name=name, version=version, description=description,
            queue_group=name, stats_handler=self._endpoint_stats,
        )
        self._max_in_flight = max_in_flight
        self._conflict_retries = conflict_retries
        self._stop_grace_s = stop_grace_s
        self._endpoints: dict[str, _Endpoint] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._queues: dict[str, RequestQueue[_Queued]] = {}
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
            self._endpoints[name] = _Endpoint(name, subject, request_model, reply_model, handler)
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
            self._endpoints[name] = _Endpoint(
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

    def _receiver(self, endpoint: _Endpoint) -> Callable[[Request], Awaitable[None]]:
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

    def _finished(self, endpoint: _Endpoint, task: asyncio.Task[None]) -> None:
        """Free the request's slot; log a reply that could not be sent."""
        self._tasks.discard(task)
        self._slots[endpoint.name].release()
        if not task.cancelled() and task.exception() is not None:
            _log.error("could not answer a request on %s", endpoint.subject,
                       exc_info=task.exception())

    def _endpoint_stats(self, stats: EndpointStats) -> dict[str, int]:
        """Outcome counts for `$SRV.STATS` (micro's own counters see only the hand-off)."""
        return dict(self._endpoints[stats.name].outcomes)

    def _parsed(self, endpoint: _Endpoint, request: Request) -> _Queued | None:
        """The request ready for its endpoint's queue; None when the endpoint takes no
        batches or the request is invalid (answered alone, with the reason)."""
        if endpoint.batch_handler is None:
            return None
        try:
            command = endpoint.request_model.model_validate_json(request.data)
        except ValidationError:
            return None
        context = from_headers(request.headers).caused_by(str(command.command_id))
        return _Queued(request, command, context, time.perf_counter())

    async def _serve(self, endpoint: _Endpoint, request: Request) -> None:
        """Answer one request, counting and timing its outcome."""
        started_s = time.perf_counter()
        outcome, envelope = await self._answer(endpoint, request)
        await self._respond(endpoint, request, outcome, envelope, started_s)

    async def _serve_batch(self, endpoint: _Endpoint, batch: Sequence[_Queued]) -> None:
        """Answer a batch of requests: together when that works, else each alone. Every
        request's slot is freed, whatever happens (cancelled at shutdown, its sender
        hears nothing and retries)."""
        try:
            answers = await self._answer_batch(endpoint, batch)
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
                                    queued.started_s)  # fmt: skip
            except Exception:
                _log.exception("could not answer a request on %s", endpoint.subject)
            finally:
                self._slots[endpoint.name].release()

    async def _respond(
        self, endpoint: _Endpoint, request: Request, outcome: Outcome, envelope: Envelope,
        started_s: float,
    ) -> None:
        """Send the answer, counting and timing its outcome."""
        endpoint.outcomes[outcome] += 1
        metrics.command_seconds.labels(endpoint=endpoint.subject, outcome=outcome).observe(
            time.perf_counter() - started_s
        )
        data = orjson.dumps(envelope)
        if envelope["status"] == "error":
            await request.respond_error(envelope["code"], envelope["message"], data)
        else:
            await request.respond(data)

    async def _answer(self, endpoint: _Endpoint, request: Request) -> tuple[Outcome, Envelope]:
        """Parse, then execute in the sender's context; every failure becomes an error reply."""
        try:
            command = endpoint.request_model.model_validate_json(request.data)
        except ValidationError as error:
            description = describe_invalid(endpoint.subject, error)
            _log.warning("%s", description)
            return "error", error_envelope("400", description)
        context = from_headers(request.headers).caused_by(str(command.command_id))
        return await self._answer_in(endpoint, command, context)

    async def _answer_in(
        self, endpoint: _Endpoint, command: Command, context: RequestContext
    ) -> tuple[Outcome, Envelope]:
        """Execute in the sender's context; every failure becomes an error reply."""
        with bound(context):
            try:
                return await self._execute(endpoint, command)
            except CommandNotReady as not_ready:
                _log.info("command %s on %s not ready: %s", command.command_id,
                          endpoint.subject, not_ready)
                return "error", error_envelope("503", f"{endpoint.subject}: {not_ready}")
            except Exception:
                # ledger.logs adds the bound context (correlation, trace) to the record.
                _log.exception(
                    "command %s on %s failed", command.command_id, endpoint.subject,
                    extra={"command_id": str(command.command_id), "endpoint": endpoint.subject},
                )
                # The cause stays in our logs; the sender gets the id to find it by.
                message = f"{endpoint.subject} failed; see correlation {context.correlation_id}"
                return "error", error_envelope("500", message)

    async def _answer_batch(
        self, endpoint: _Endpoint, batch: Sequence[_Queued]
    ) -> list[tuple[Outcome, Envelope]]:
        """Replay the replies recorded already; decide the others in one transaction, or,
        when that fails as a whole, each in its own, one after another in arrival order."""
        answers: dict[int, tuple[Outcome, Envelope]] = {}
        try:
            answers = await self._recorded_many(endpoint, batch)
            fresh = [queued for index, queued in enumerate(batch) if index not in answers]
            if fresh:
                together = iter(await self._together(endpoint, fresh))
                answers |= {index: next(together) for index in range(len(batch))
                            if index not in answers}  # fmt: skip
        except _EXPECTED_BATCH_FAILURES as error:
            _log.info("a batch of %d on %s is served one by one: %r", len(batch),
                      endpoint.subject, error)  # fmt: skip
        except Exception:  # a bug that shows only in batches: loud, and counted
            _log.exception("a batch of %d on %s failed; served one by one", len(batch),
                           endpoint.subject)  # fmt: skip
            endpoint.outcomes["batch_failed"] += 1
        for index, queued in enumerate(batch):
            if index not in answers:
                answers[index] = await self._answer_in(endpoint, queued.command, queued.context)
        return [answers[index] for index in range(len(batch))]

    async def _recorded_many(
        self, endpoint: _Endpoint, batch: Sequence[_Queued]
    ) -> dict[int, tuple[Outcome, Envelope]]:
        """`_recorded` of a batch in one statement, by the requests' places in it."""
        ids = [queued.command.command_id for queued in batch]
        recorded = await recorded_replies(self._store.pool, self._store.schema, ids)
        return {
            index: self._replayed(endpoint, queued.command, recorded[queued.command.command_id])
            for index, queued in enumerate(batch) if queued.command.command_id in recorded
        }  # fmt: skip

    async def _together(
        self, endpoint: _Endpoint, batch: Sequence[_Queued]
    ) -> list[tuple[Outcome, Envelope]]:
        """Decide the batch in one unit of work, its replies recorded with its effects."""
        assert endpoint.batch_handler is not None, "a batch endpoint"
        incoming = [Incoming(queued.command, queued.context) for queued in batch]
        async with self._store.unit_of_work() as unit:
            results = await endpoint.batch_handler(incoming, unit)
            assert len(results) == len(batch), "one result per command"
            answers = [_answer_of(endpoint, result) for result in results]
            replies = [(queued.command.command_id, endpoint.subject, envelope)
                       for queued, (_, envelope) in zip(batch, answers, strict=True)]  # fmt: skip
            recorded = await record_replies(unit.connection, self._store.schema, replies)
            if len(recorded) != len(batch):
                raise _AnsweredElsewhere(f"{len(batch) - len(recorded)} of the batch")
        metrics.commands_per_commit.labels(endpoint=endpoint.subject).observe(len(batch))
        return answers

    async def _execute(self, endpoint: _Endpoint, command: Command) -> tuple[Outcome, Envelope]:
        """Replay the recorded reply, else apply; re-run on a concurrent writer, boundedly."""
        for attempt in range(self._conflict_retries + 1):
            recorded = await self._recorded(endpoint, command)
            if recorded is not None:
                return recorded
            try:
                return await self._attempt(endpoint, command)
            except (ConcurrencyError, TransientConflict):  # a concurrent writer: run again
                if attempt == self._conflict_retries:
                    raise
                await asyncio.sleep(random.uniform(0, 0.01 * (attempt + 1)))
        raise AssertionError("the loop returns or raises")

    async def _attempt(self, endpoint: _Endpoint, command: Command) -> tuple[Outcome, Envelope]:
        """One run; when it fails because another instance answered first, that answer wins."""
        try:
            return await self._apply_or_refuse(endpoint, command)
        except Exception:
            # Our transaction rolled back; a reply recorded meanwhile (our append or our
            # record_reply lost a race for this command_id) is the command's answer.
            recorded = await self._recorded(endpoint, command)
            if recorded is None:
                raise
            return recorded

    async def _apply_or_refuse(
        self, endpoint: _Endpoint, command: Command
    ) -> tuple[Outcome, Envelope]:
        """Commit the handler's effect with its reply, or (refused) the refusal alone."""
        try:
            async with self._store.unit_of_work() as unit:
                outcome, envelope = _answer_of(endpoint, await endpoint.handler(command, unit))
                await self._record(unit, endpoint, command, envelope)
            return outcome, envelope
        except CommandRefused as refusal:
            # The refusal rolled the effect back; it alone is recorded, in its own transaction.
            envelope = refusal_envelope(refusal)
            async with self._store.unit_of_work() as unit:
                await self._record(unit, endpoint, command, envelope)
            return "refused", envelope

    async def _record(
        self, unit: UnitOfWork, endpoint: _Endpoint, command: Command, envelope: Envelope
    ) -> None:
        """Record `envelope` in `unit`; raise _AnsweredElsewhere when a reply is there already."""
        schema = self._store.schema
        if not await record_reply(
            unit.connection, schema, command.command_id, endpoint.subject, envelope
        ):
            raise _AnsweredElsewhere(str(command.command_id))

    async def _recorded(
        self, endpoint: _Endpoint, command: Command
    ) -> tuple[Outcome, Envelope] | None:
        """The answer committed for the command, if any: its reply replayed, or an error
        when its id was used on another endpoint (that command was not this one)."""
        recorded = await recorded_reply(self._store.pool, self._store.schema, command.command_id)
        if recorded is None:
            return None
        return self._replayed(endpoint, command, recorded)

    def _replayed(
        self, endpoint: _Endpoint, command: Command, recorded: RecordedReply
    ) -> tuple[Outcome, Envelope]:
        """The recorded reply again, or an error when it was given on another endpoint."""
        if recorded.endpoint != endpoint.subject:
            message = f"command_id {command.command_id} was already used for {recorded.endpoint}"
            _log.warning("%s; %s refused it", message, endpoint.subject)
            return "error", error_envelope("400", message)
        return "replayed", recorded.reply


def _answer_of(endpoint: _Endpoint, result: BaseModel | CommandRefused) -> tuple[Outcome, Envelope]:
    """The outcome and envelope of one command's result in a batch."""
    if isinstance(result, CommandRefused):
        return "refused", refusal_envelope(result)
    assert isinstance(result, endpoint.reply_model), "reply of the declared model"
    return "ok", {"status": "ok", "reply": result.model_dump(mode="json")}
