"""Answering commands: each applied at most once, its reply recorded with its effect.

`Answers` is what a command service does with a parsed request, apart from NATS: replay the
reply recorded for its `command_id`, or run the handler in a unit of work and record the
reply in the same transaction; a batch endpoint decides many commands in one unit of work,
and a batch that fails as a whole is answered again one command at a time.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

from nats.micro.request import Request
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
from ledger.commands.envelope import (
    BatchHandler,
    Command,
    CommandNotReady,
    CommandRefused,
    Envelope,
    Incoming,
    Outcome,
    describe_invalid,
    error_envelope,
    refusal_envelope,
)
from ledger.context import RequestContext, bound, from_headers

DEFAULT_CONFLICT_RETRIES: Final = 5
"""Re-runs of a handler whose append met a concurrent writer, before it counts as an error."""
_log = logging.getLogger(__name__)


class _AnsweredElsewhere(Exception):
    """Another instance recorded a reply to this command first; roll this attempt back."""


_EXPECTED_BATCH_FAILURES: Final = (
    ConcurrencyError, TransientConflict, _AnsweredElsewhere, CommandNotReady, StoreUnavailable,
)
"""Why a batch may fail for one of its commands or for a moment: served one by one, quietly."""


@dataclass(frozen=True)
class Endpoint:
    """A declared command: its subject, models and handler(s), and its outcome counts."""

    name: str
    subject: str
    request_model: type[Command]
    reply_model: type[BaseModel]
    handler: Callable[[Any, UnitOfWork], Awaitable[BaseModel]]
    batch_handler: BatchHandler[Any, Any] | None = None
    outcomes: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class Queued:
    """A parsed request waiting for its batch."""

    request: Request
    command: Command
    context: RequestContext
    started_s: float


class Answers:
    """Answers the commands of one store's endpoints."""

    def __init__(self, store: EventStore, conflict_retries: int = DEFAULT_CONFLICT_RETRIES
                 ) -> None:
        assert conflict_retries >= 0, "retries cannot be negative"
        self._store = store
        self._conflict_retries = conflict_retries

    async def answer(
        self, endpoint: Endpoint, request: Request
    ) -> tuple[Outcome, Envelope, RequestContext]:
        """Parse, then execute in the sender's context; every failure becomes an error reply.
        Also the context it was answered in, for the reply's headers: caused by the command,
        or with no cause when the request names no valid command."""
        sent = from_headers(request.headers)
        try:
            command = endpoint.request_model.model_validate_json(request.data)
        except ValidationError as error:
            description = describe_invalid(endpoint.subject, error)
            with bound(sent):  # the sender's correlation and trace, to find who sent it
                _log.warning("%s", description)
            return "error", error_envelope("400", description), replace(sent, causation_id=None)
        handling = sent.caused_by(str(command.command_id))
        return (*await self.answer_in(endpoint, command, handling), handling)

    async def answer_in(
        self, endpoint: Endpoint, command: Command, context: RequestContext
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
                # The cause stays in our logs; the sender gets the id to find it by: the
                # command's, not the correlation id, which names the request that began the
                # saga and reaches every reader of the transfer's steps (docs/auth.md).
                message = f"{endpoint.subject} failed; see command {command.command_id} in the logs"
                return "error", error_envelope("500", message)

    async def answer_batch(
        self, endpoint: Endpoint, batch: Sequence[Queued]
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
                answers[index] = await self.answer_in(endpoint, queued.command, queued.context)
        return [answers[index] for index in range(len(batch))]

    async def _recorded_many(
        self, endpoint: Endpoint, batch: Sequence[Queued]
    ) -> dict[int, tuple[Outcome, Envelope]]:
        """`_recorded` of a batch in one statement, by the requests' places in it."""
        ids = [queued.command.command_id for queued in batch]
        recorded = await recorded_replies(self._store.pool, self._store.schema, ids)
        return {
            index: self._replayed(endpoint, queued.command, recorded[queued.command.command_id])
            for index, queued in enumerate(batch) if queued.command.command_id in recorded
        }  # fmt: skip

    async def _together(
        self, endpoint: Endpoint, batch: Sequence[Queued]
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

    async def _execute(self, endpoint: Endpoint, command: Command) -> tuple[Outcome, Envelope]:
        """`_execute_once`; a command not ready that can catch up is run once more when,
        caught up outside any transaction, it is ready."""
        try:
            return await self._execute_once(endpoint, command)
        except CommandNotReady as not_ready:
            if not_ready.catch_up is None or not await not_ready.catch_up():
                raise
        return await self._execute_once(endpoint, command)

    async def _execute_once(
        self, endpoint: Endpoint, command: Command
    ) -> tuple[Outcome, Envelope]:
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

    async def _attempt(self, endpoint: Endpoint, command: Command) -> tuple[Outcome, Envelope]:
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
        self, endpoint: Endpoint, command: Command
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
        self, unit: UnitOfWork, endpoint: Endpoint, command: Command, envelope: Envelope
    ) -> None:
        """Record `envelope` in `unit`; raise _AnsweredElsewhere when a reply is there already."""
        schema = self._store.schema
        if not await record_reply(
            unit.connection, schema, command.command_id, endpoint.subject, envelope
        ):
            raise _AnsweredElsewhere(str(command.command_id))

    async def _recorded(
        self, endpoint: Endpoint, command: Command
    ) -> tuple[Outcome, Envelope] | None:
        """The answer committed for the command, if any: its reply replayed, or an error
        when its id was used on another endpoint (that command was not this one)."""
        recorded = await recorded_reply(self._store.pool, self._store.schema, command.command_id)
        if recorded is None:
            return None
        return self._replayed(endpoint, command, recorded)

    def _replayed(
        self, endpoint: Endpoint, command: Command, recorded: RecordedReply
    ) -> tuple[Outcome, Envelope]:
        """The recorded reply again, or an error when it was given on another endpoint."""
        if recorded.endpoint != endpoint.subject:
            message = f"command_id {command.command_id} was already used for {recorded.endpoint}"
            _log.warning("%s; %s refused it", message, endpoint.subject)
            return "error", error_envelope("400", message)
        return "replayed", recorded.reply


def _answer_of(endpoint: Endpoint, result: BaseModel | CommandRefused) -> tuple[Outcome, Envelope]:
    """The outcome and envelope of one command's result in a batch."""
    if isinstance(result, CommandRefused):
        return "refused", refusal_envelope(result)
    assert isinstance(result, endpoint.reply_model), "reply of the declared model"
    return "ok", {"status": "ok", "reply": result.model_dump(mode="json")}
