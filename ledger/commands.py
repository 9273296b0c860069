"""Commands over NATS request/reply: idempotent handlers on the server, retrying sends.

    service = CommandService(nc, store, name="account", version="0.1.0")

    @service.command("reserve", ReserveFunds, Reserved)  # subject "account.reserve"
    async def reserve(command: ReserveFunds, unit: UnitOfWork) -> Reserved: ...

    reply = await CommandClient(nc, 2.0, 3).send("account.reserve", command, Reserved)

A handler runs in a unit of work with the request's context bound (`ledger.context.current()`
is the sender's correlation, caused by the command id), so it appends its events with
`metadata=current().as_metadata()`. Its reply is recorded with its effect in one transaction,
and a repeated `command_id` is answered with that recorded reply, never applied twice.

On the wire a reply is a JSON envelope: `{"status": "ok", "reply": {...}}`,
`{"status": "refused", "code", "message", "details"}` (recorded like a success), or
`{"status": "error", "code", "message"}` (not recorded, so a later retry may succeed).
Replies and refusal details are JSON without floats (money is integers in minor units).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias, TypeVar

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.micro.request import ERROR_HEADER, Request
from nats.micro.service import EndpointConfig, EndpointStats, Service, ServiceConfig
from pydantic import BaseModel, ConfigDict, ValidationError

from eventstore import ConcurrencyError, EventStore, UnitOfWork, record_reply, recorded_reply
from ledger import metrics
from ledger.context import bound, current, from_headers
from ledger.settings import Settings

DEFAULT_MAX_IN_FLIGHT: Final = 64
"""Requests one endpoint of one instance handles at once; more wait in the subscription."""
DEFAULT_CONFLICT_RETRIES: Final = 5
"""Re-runs of a handler whose append met a concurrent writer, before it counts as an error."""
DEFAULT_STOP_GRACE_S: Final = 10.0
"""How long `stop` lets requests in progress finish before cancelling them."""
_BACKOFF_BASE_S: Final = 0.1
_BACKOFF_MAX_S: Final = 2.0
_MAX_ERROR_CHARS: Final = 500

Outcome: TypeAlias = Literal["ok", "refused", "error", "replayed"]
Envelope: TypeAlias = dict[str, Any]

_log = logging.getLogger(__name__)


class Command(BaseModel):
    """Base of every command: immutable, strict, and identified for idempotency."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    command_id: uuid.UUID


CommandT = TypeVar("CommandT", bound=Command)
ReplyT = TypeVar("ReplyT", bound=BaseModel)
CommandHandler: TypeAlias = Callable[[CommandT, UnitOfWork], Awaitable[ReplyT]]


class CommandRefused(Exception):
    """The participant declined the command (a result, recorded like a reply, not a crash)."""

    def __init__(self, code: str, message: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = dict(details or {})


class CommandFailed(Exception):
    """The command got no usable answer: an error reply, a bad reply, or retries ran out."""

    def __init__(self, message: str, *, subject: str, attempts: int, code: str | None = None):
        super().__init__(message)
        self.subject = subject
        self.attempts = attempts
        self.code = code


class _AnsweredElsewhere(Exception):
    """Another instance recorded a reply to this command first; roll this attempt back."""


@dataclass(frozen=True)
class _Endpoint:
    name: str
    subject: str
    request_model: type[Command]
    reply_model: type[BaseModel]
    handler: Callable[[Any, UnitOfWork], Awaitable[BaseModel]]
    outcomes: Counter[str] = field(default_factory=Counter)


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
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=self._stop_grace_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    def _receiver(self, endpoint: _Endpoint) -> Callable[[Request], Awaitable[None]]:
        """The micro handler of `endpoint`: hands each request to a task of its own."""
        # nats-py runs one subscription's callbacks one after another; handing each request
        # to its own task lets slow ones overlap, and the semaphore bounds how many do.
        async def receive(request: Request) -> None:
            await self._slots[endpoint.name].acquire()
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

    async def _serve(self, endpoint: _Endpoint, request: Request) -> None:
        """Answer one request, counting and timing its outcome."""
        started_s = time.perf_counter()
        outcome, envelope = await self._answer(endpoint, request)
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
            description = _describe_invalid(endpoint.subject, error)
            _log.warning("%s", description)
            return "error", _error("400", description)
        context = from_headers(request.headers).caused_by(str(command.command_id))
        with bound(context):
            try:
                return await self._execute(endpoint, command)
            except Exception:
                # ledger.logs adds the bound context (correlation, trace) to the record.
                _log.exception(
                    "command %s on %s failed", command.command_id, endpoint.subject,
                    extra={"command_id": str(command.command_id), "endpoint": endpoint.subject},
                )
                # The cause stays in our logs; the sender gets the id to find it by.
                message = f"{endpoint.subject} failed; see correlation {context.correlation_id}"
                return "error", _error("500", message)

    async def _execute(self, endpoint: _Endpoint, command: Command) -> tuple[Outcome, Envelope]:
        """Replay the recorded reply, else apply; re-run on a concurrent writer, boundedly."""
        for attempt in range(self._conflict_retries + 1):
            recorded = await self._recorded(command)
            if recorded is not None:
                return "replayed", recorded
            try:
                return await self._attempt(endpoint, command)
            except ConcurrencyError:
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
            recorded = await self._recorded(command)
            if recorded is None:
                raise
            return "replayed", recorded

    async def _apply_or_refuse(
        self, endpoint: _Endpoint, command: Command
    ) -> tuple[Outcome, Envelope]:
        """Commit the handler's effect with its reply, or (refused) the refusal alone."""
        try:
            async with self._store.unit_of_work() as unit:
                reply = await endpoint.handler(command, unit)
                assert isinstance(reply, endpoint.reply_model), "reply of the declared model"
                envelope = {"status": "ok", "reply": reply.model_dump(mode="json")}
                await self._record(unit, endpoint, command, envelope)
            return "ok", envelope
        except CommandRefused as refusal:
            # The refusal rolled the effect back; it alone is recorded, in its own transaction.
            envelope = _refused(refusal)
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

    async def _recorded(self, command: Command) -> Envelope | None:
        """The reply committed for the command, if any."""
        return await recorded_reply(self._store.pool, self._store.schema, command.command_id)


class CommandClient:
    """Sends commands and waits for their replies, retrying unanswered attempts."""

    def __init__(self, nc: Client, timeout_s: float, max_retries: int) -> None:
        assert timeout_s > 0, "an attempt needs time to be answered"
        assert max_retries >= 0, "retries cannot be negative"
        self._nc = nc
        self._timeout_s = timeout_s
        self._max_retries = max_retries

    @classmethod
    def from_settings(cls, nc: Client, settings: Settings) -> CommandClient:
        """A client with the configured per-attempt timeout and retries."""
        return cls(nc, settings.command_timeout_s, settings.command_max_retries)

    async def send(self, subject: str, command: Command, reply_model: type[ReplyT]) -> ReplyT:
        """Send `command` in the current context and return its reply.

        Timeouts and "no responders" are retried with backoff under the same command id, so
        a retry never applies the command twice. Raises CommandRefused when the participant
        declines, CommandFailed on an error reply or when every attempt went unanswered.
        """
        payload = command.model_dump_json().encode()
        headers = current().as_headers()
        attempts = self._max_retries + 1
        unanswered: Exception | None = None
        for attempt in range(1, attempts + 1):
            try:
                message = await self._nc.request(
                    subject, payload, timeout=self._timeout_s, headers=headers
                )
            except (NatsTimeoutError, NoRespondersError) as error:
                unanswered = error
                if attempt < attempts:
                    await asyncio.sleep(_backoff_s(attempt))
                continue
            return _reply_from(subject, message, reply_model, attempt)
        raise CommandFailed(
            f"{subject} went unanswered after {attempts} attempts: {unanswered}",
            subject=subject, attempts=attempts,
        )


def _reply_from(subject: str, message: Msg, reply_model: type[ReplyT], attempt: int) -> ReplyT:
    """The reply in an envelope; raises CommandRefused or CommandFailed for the others."""
    try:
        envelope = orjson.loads(message.data)
    except orjson.JSONDecodeError:
        envelope = None
    if not isinstance(envelope, dict):
        error = (message.headers or {}).get(ERROR_HEADER, "a reply that is not an envelope")
        raise CommandFailed(f"{subject} answered {error}", subject=subject, attempts=attempt)
    status = envelope.get("status")
    if status == "ok":
        try:
            return reply_model.model_validate(envelope.get("reply"))
        except ValidationError as invalid:
            message_text = f"{subject} answered a reply that is not a {reply_model.__name__}"
            raise CommandFailed(message_text, subject=subject, attempts=attempt) from invalid
    if status == "refused":
        raise CommandRefused(
            str(envelope.get("code")), str(envelope.get("message")), envelope.get("details")
        )
    code = str(envelope.get("code", "")) or None
    raise CommandFailed(
        f"{subject} failed ({code}): {envelope.get('message')}",
        subject=subject, attempts=attempt, code=code,
    )


def _backoff_s(attempt: int) -> float:
    """Exponential, capped, with half of it jittered so retrying senders spread out."""
    ceiling_s = min(_BACKOFF_MAX_S, _BACKOFF_BASE_S * 2.0 ** (attempt - 1))
    return ceiling_s / 2 + random.uniform(0, ceiling_s / 2)


def _refused(refusal: CommandRefused) -> Envelope:
    """The envelope of a refusal."""
    return {
        "status": "refused", "code": refusal.code,
        "message": refusal.message, "details": refusal.details,
    }


def _error(code: str, message: str) -> Envelope:
    """The envelope of an error (micro's codes: "400" bad request, "500" failure)."""
    return {"status": "error", "code": code, "message": message}


def _describe_invalid(subject: str, error: ValidationError) -> str:
    """What was wrong with a request, field by field, in bounded length."""
    problems = "; ".join(
        f"{'.'.join(str(part) for part in problem['loc']) or 'body'}: {problem['msg']}"
        for problem in error.errors(include_url=False)
    )
    return f"invalid {subject} request: {problems}"[:_MAX_ERROR_CHARS]
