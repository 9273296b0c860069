"""The orchestrator: starts sagas from the trade service's events and advances them.

Workers claim due sagas with a lease (`UPDATE ... WHERE saga_id IN (SELECT ... FOR UPDATE
SKIP LOCKED)` in one short statement), then, for each, fold its log and perform
`next_action` until the saga must wait: record a step's command (StepStarted) before
sending it, send it over NATS (no transaction open meanwhile), and record its outcome
before the next step. Every append expects the version the worker folded, so a worker that
lost its lease (paused past it) fails with ConcurrencyError and drops the saga; what it had
sent carries the same command id as the new holder's resend, so it is applied once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Final

from nats.aio.client import Client

from eventstore import NO_STREAM, ConcurrencyError, EventStore, UnitOfWork
from eventstore._db import Connection
from ledger import context
from ledger.commands import CommandClient, CommandFailed, CommandRefused
from ledger.consumers import ConsumedEvent
from ledger.settings import Settings
from saga import log
from saga.contracts import SagaEvent, SagaKind, SagaStarted, stream_of
from saga.definition import SETTLE_LEGS, Participants, SagaDefinition
from saga.state import (
    Idle,
    Outcome,
    Record,
    Refused,
    Replied,
    RetryPolicy,
    SagaState,
    Send,
    Unanswered,
    Wait,
    after_outcome,
    next_action,
)
from trade_service.contracts import TradeRequested, TransferRequested

_log = logging.getLogger(__name__)
_STARTING_EVENTS: Final[dict[str, type[TransferRequested] | type[TradeRequested]]] = {
    "TransferRequested": TransferRequested,
    "TradeRequested": TradeRequested,
}
_MAX_ACTIONS_PER_CLAIM: Final = 64
"""Bounds one worker's turn on one saga (a saga that never waits cannot starve others)."""


def utc_now() -> datetime:
    """The orchestrator's clock."""
    return datetime.now(UTC)


class Orchestrator:
    """Advances due sagas of one store; run as many instances as wanted."""

    def __init__(
        self,
        store: EventStore,
        nc: Client,
        settings: Settings,
        *,
        participants: Participants | None = None,
        definition: SagaDefinition = SETTLE_LEGS,
        clock: Callable[[], datetime] = utc_now,
        owner: str | None = None,
    ) -> None:
        assert settings.saga_lease_s > settings.saga_step_timeout_s, "a lease outlives a step"
        self.owner = owner or f"orchestrator-{uuid.uuid4().hex[:12]}"
        self._store = store
        self._settings = settings
        self._participants = participants or Participants()
        self._definition = definition
        self._clock = clock
        self._client = CommandClient(nc, settings.saga_step_timeout_s, max_retries=0)
        self._policy = RetryPolicy(
            settings.saga_step_max_attempts, settings.saga_backoff_first_s,
            settings.saga_backoff_max_s,
        )  # fmt: skip

    async def run(self) -> None:
        """Claim and advance due sagas until cancelled; pause when none is due."""
        while True:
            advanced = await self.run_once()
            if not advanced:
                await asyncio.sleep(self._settings.saga_poll_interval_s)

    async def run_once(self) -> int:
        """Claim one batch of due sagas and advance each; how many were claimed."""
        saga_ids = await log.claim_due(
            self._store.pool, self._store.schema, self.owner, self._clock(),
            self._settings.saga_lease_s, self._settings.saga_worker_batch,
        )  # fmt: skip
        if saga_ids:
            async with asyncio.TaskGroup() as group:
                for saga_id in saga_ids:
                    group.create_task(self._advance_leased(saga_id))
        return len(saga_ids)

    async def start(self, request: TransferRequested | TradeRequested) -> bool:
        """Start the saga of `request` in its own transaction; False if it exists already."""
        async with self._store.unit_of_work() as unit:
            return await start_saga(unit, request, self._deadline_at())

    async def start_from_event(self, connection: Connection, event: ConsumedEvent) -> None:
        """The starter consumer's handler: start a saga for a transfer or trade request,
        in the consumer's transaction; other events of the trade service are skipped."""
        model = _STARTING_EVENTS.get(event.event_type)
        if model is None:
            return
        request = model.model_validate(event.data)
        is_new = await start_saga(UnitOfWork(self._store, connection), request,
                                  self._deadline_at())  # fmt: skip
        _log.info("saga %s %s", request.transfer_id, "started" if is_new else "exists already")

    def _deadline_at(self) -> datetime:
        return self._clock() + timedelta(seconds=self._settings.saga_deadline_s)

    async def _advance_leased(self, saga_id: str) -> None:
        """Advance one leased saga; the lease ends with the turn (or stays until a wait)."""
        not_before: datetime | None = None
        try:
            not_before = await self._advance(saga_id)
        except ConcurrencyError:
            _log.warning("saga %s was advanced by another orchestrator; dropped", saga_id)
        except Exception:
            # The saga stays due; the next claim retries it after this pause.
            _log.exception("advancing saga %s failed", saga_id)
            not_before = self._clock() + timedelta(seconds=self._settings.saga_backoff_max_s)
        finally:
            await log.release_lease(
                self._store.pool, self._store.schema, saga_id, self.owner, not_before
            )

    async def _advance(self, saga_id: str) -> datetime | None:
        """Perform the saga's actions until it waits (returns until when), is idle or
        final (None), the turn's bound is reached, or the lease is lost."""
        loaded = await log.load(self._store, self._definition, saga_id)
        state = loaded.state
        first = loaded.events[0]
        with context.bound(context.from_metadata(first.metadata, str(first.event_id))):
            for _ in range(_MAX_ACTIONS_PER_CLAIM):
                action = next_action(self._definition, state, self._clock())
                match action:
                    case Idle():
                        return None
                    case Wait():
                        return action.until
                    case Record():
                        state = await self._record(state, action.events)
                    case Send():
                        if not await self._renew(saga_id):
                            return None
                        state = await self._perform(state, action)
        return None

    async def _renew(self, saga_id: str) -> bool:
        until = self._clock() + timedelta(seconds=self._settings.saga_lease_s)
        is_held = await log.renew_lease(
            self._store.pool, self._store.schema, saga_id, self.owner, until
        )
        if not is_held:
            _log.warning("lease on saga %s lost to another orchestrator", saga_id)
        return is_held

    async def _perform(self, state: SagaState, send: Send) -> SagaState:
        """Record the send (unless it is a resend), send, record the outcome."""
        if not send.is_recorded:
            state = await self._record(state, (send.started_event(),))
        outcome = await self._send(state, send)
        events = after_outcome(
            self._definition, state, outcome, self._clock(), self._policy, random.random()
        )
        if isinstance(outcome, Unanswered):
            _log.warning("saga %s: %s attempt %d failed: %s", state.saga_id, send.step.name,
                         send.attempt, outcome.error)  # fmt: skip
        return await self._record(state, events)

    async def _send(self, state: SagaState, send: Send) -> Outcome:
        step = send.step
        command = step.build(state.step_input(), send.command_id)
        try:
            reply = await self._client.send(
                step.subject(self._participants), command, step.reply_model
            )
        except CommandRefused as refusal:
            return Refused(refusal.code, refusal.message)
        except CommandFailed as failure:
            return Unanswered(str(failure))
        declined = step.refusal_of(reply)
        if declined is not None:
            return Refused(*declined)
        return Replied(reply.model_dump(mode="json"))

    async def _record(self, state: SagaState, events: tuple[SagaEvent, ...]) -> SagaState:
        metadata = context.current().as_metadata()
        async with self._store.unit_of_work() as unit:
            return await log.record(unit, self._definition, state, events, metadata)


async def start_saga(
    unit: UnitOfWork, request: TransferRequested | TradeRequested, deadline_at: datetime
) -> bool:
    """Append the SagaStarted of `request` in `unit`; False (and no change) when the saga
    was started before: the saga id is the transfer id, and its stream must not exist."""
    kind: SagaKind = "trade" if isinstance(request, TradeRequested) else "transfer"
    started = SagaStarted(saga_id=request.transfer_id, kind=kind, legs=request.legs,
                          deadline_at=deadline_at)  # fmt: skip
    events = log.new_events((started,), context.current().as_metadata())
    try:
        # A savepoint: a refused append must not abort the caller's transaction.
        async with unit.connection.transaction():
            await unit.append(stream_of(request.transfer_id), events, NO_STREAM)
    except ConcurrencyError:
        return False
    return True
