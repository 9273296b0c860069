"""The orchestrator: advances sagas (`saga.starter` starts them from the trade's events).

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
import contextlib
import logging
import random
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Final

from nats.aio.client import Client

from eventstore import ConcurrencyError, EventStore, RecordedEvent
from eventstore.notifier import Notifier
from ledger import context
from ledger.commands import CommandClient, CommandFailed, CommandRefused
from ledger.settings import Settings
from saga import log, runs
from saga.clock import utc_now
from saga.contracts import SagaEvent, StepStarted
from saga.decisions import (
    Action,
    Idle,
    Outcome,
    Record,
    Refused,
    Replied,
    RetryPolicy,
    Send,
    Unanswered,
    Wait,
    after_outcome,
    next_action,
)
from saga.definition import SETTLE_LEGS, Participants, SagaDefinition
from saga.recorder import LeaseLost, SagaRecorder
from saga.starter import SagaStarter
from saga.state import SagaState, evolve_all
from trade_service.contracts import TradeRequested, TransferRequested

_log = logging.getLogger(__name__)
_MAX_FAILED_TURNS_KEPT: Final = 10_000
"""Sagas whose unexpected failures in a row an orchestrator counts at most."""
_MAX_ACTIONS_PER_CLAIM: Final = 64
"""Bounds one worker's turn on one saga (a saga that never waits cannot starve others)."""
_CLAIMS_IN_FLIGHT: Final = 4
"""Sagas one orchestrator advances at once, in claims (`saga_worker_batch` sagas each)."""


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
        notifier: Notifier | None = None,
    ) -> None:
        """`notifier` (the saga store's) wakes an idle orchestrator when a saga starts;
        without it, an idle orchestrator polls."""
        assert settings.saga_lease_s > settings.saga_step_timeout_s, "a lease outlives a step"
        self.owner = owner or f"orchestrator-{uuid.uuid4().hex[:12]}"
        self._store = store
        self._settings = settings
        self._participants = participants or Participants()
        self._definition = definition
        self._clock = clock
        self._notifier = notifier
        self._leased: dict[str, context.RequestContext | None] = {}
        """Sagas this worker advances now, under its lease, with the request context of each
        once its turn has read it (the turn's own log lines carry it)."""
        self.starter = SagaStarter(store, settings.saga_deadline_s, clock)
        """Starts sagas (the saga service's starter consumer hands it the trade's events)."""
        self._recorder = SagaRecorder(store, definition, self.owner, self._lease_until)
        self._client = CommandClient(nc, settings.saga_step_timeout_s, max_retries=0)
        self._policy = RetryPolicy(
            settings.saga_step_max_attempts, settings.saga_backoff_first_s,
            settings.saga_backoff_max_s,
        )  # fmt: skip
        self._failed_turns: dict[str, int] = {}
        """Turns in a row that failed unexpectedly, by saga (their pause grows with it)."""

    async def run(self) -> None:
        """Claim and advance due sagas until cancelled.

        Up to `_CLAIMS_IN_FLIGHT` claims' worth of sagas advance at once, and a claim is made
        as soon as there is room, not when a whole batch is done (one slow saga no longer
        holds up the others). When no more are due, it waits for an append to the saga log
        (a saga started: the starter announces it) or the poll interval, whichever is first.
        """
        batch = self._settings.saga_worker_batch
        limit = batch * _CLAIMS_IN_FLIGHT
        in_flight: set[asyncio.Task[None]] = set()
        room = asyncio.Event()

        def finished(task: asyncio.Task[None]) -> None:
            in_flight.discard(task)
            room.set()

        try:
            while True:
                seen = self._notifier.generation if self._notifier is not None else 0
                wanted = min(batch, limit - len(in_flight))
                if wanted <= 0:
                    room.clear()
                    await room.wait()
                    continue
                saga_ids = await runs.claim_due(
                    self._store.pool, self._store.schema, self.owner, self._clock(),
                    self._settings.saga_lease_s, wanted,
                )  # fmt: skip
                for saga_id in saga_ids:
                    task = asyncio.create_task(self._advance_leased(saga_id))
                    in_flight.add(task)
                    task.add_done_callback(finished)
                if len(saga_ids) < wanted:
                    await self._wait_for_due(seen)
        finally:
            for task in in_flight:
                task.cancel()
            try:
                await asyncio.gather(*in_flight, return_exceptions=True)
            finally:
                await self._recorder.close()

    async def _wait_for_due(self, seen: int) -> None:
        """Until the saga log changes after generation `seen`, or the poll interval passed."""
        interval_s = self._settings.saga_poll_interval_s
        if self._notifier is None:
            await asyncio.sleep(interval_s)
        else:
            await self._notifier.wait_past(seen, interval_s)

    async def run_once(self) -> int:
        """Claim one batch of due sagas and advance each; how many were claimed."""
        saga_ids = await runs.claim_due(
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
        return await self.starter.start(request)

    async def _advance_leased(self, saga_id: str) -> None:
        """Advance one leased saga; the lease ends with the turn (or stays until a wait).

        A turn that stopped the saga (final or parked) releases nothing: the record that
        stopped it ended the lease in its own transaction (`saga.runs`), and one statement
        per saga is saved."""
        not_before: datetime | None = None
        has_stopped = False
        self._leased[saga_id] = None
        try:
            ended = await self._advance(saga_id)
            has_stopped = isinstance(ended, Idle)
            not_before = ended.until if isinstance(ended, Wait) else None
        except LeaseLost:
            with self._in_context_of(saga_id):
                _log.warning("lease on saga %s lost to another orchestrator", saga_id)
        except ConcurrencyError:
            with self._in_context_of(saga_id):
                _log.warning("saga %s was advanced by another orchestrator; dropped", saga_id)
        except Exception:
            # The saga stays due; the next claim retries it after a pause that grows with
            # each turn failing in a row, from saga_backoff_first_s: a burst of transient
            # errors (the store or NATS gone for a moment) must not idle every saga in
            # flight for saga_backoff_max_s.
            failures = self._failed_turn(saga_id)
            not_before = self._policy.retry_at(self._clock(), failures, random.random())
            with self._in_context_of(saga_id):
                _log.exception("advancing saga %s failed (%d turn(s) in a row); retry at %s",
                               saga_id, failures, not_before.isoformat())  # fmt: skip
        else:
            self._failed_turns.pop(saga_id, None)
        finally:
            self._leased.pop(saga_id, None)
            if not has_stopped:
                await runs.release_lease(
                    self._store.pool, self._store.schema, saga_id, self.owner, not_before
                )

    def _in_context_of(self, saga_id: str) -> AbstractContextManager[object]:
        """The leased saga's request context bound, once its turn has read it (before that,
        nothing is bound: a log line says only what it knows)."""
        known = self._leased.get(saga_id)
        return contextlib.nullcontext() if known is None else context.bound(known)

    def _failed_turn(self, saga_id: str) -> int:
        """Count a failed turn of the saga; how many failed in a row, this one included."""
        if len(self._failed_turns) >= _MAX_FAILED_TURNS_KEPT and saga_id not in self._failed_turns:
            self._failed_turns.clear()  # forgetting only shortens some pauses
        failures = self._failed_turns.get(saga_id, 0) + 1
        self._failed_turns[saga_id] = failures
        return failures

    async def _advance(self, saga_id: str) -> Action:
        """Perform the saga's actions until it waits, is idle (final or parked), the turn's
        bound is reached, or the lease is lost; return the last action, all recorded.

        Decisions and outcomes are kept in `pending` and appended with the StepStarted of
        the next send, or before the turn ends: each is in the log before anything else
        leaves this worker, as before, with one commit per step instead of three (each
        append also renews the lease, in its transaction). Raises LeaseLost.

        The saga's decisions are caused by SagaStarted; each command by the StepStarted that
        announced it, and the events that record its outcome by the command
        (docs/causation.md).
        """
        loaded = await log.load(self._store, self._definition, saga_id)
        recorded = state = loaded.state
        pending: tuple[log.Entry, ...] = ()
        first = loaded.events[0]
        saga_context = context.from_metadata(first.metadata, str(first.event_id))
        saga_metadata = saga_context.as_metadata()
        announcement = _last_announcement(loaded.events)
        if saga_id in self._leased:
            self._leased[saga_id] = saga_context  # for the turn's log lines after it ends
        with context.bound(saga_context):
            for _ in range(_MAX_ACTIONS_PER_CLAIM):
                action = next_action(self._definition, state, self._clock())
                match action:
                    case Idle() | Wait():
                        break
                    case Record():
                        pending += log.entries(action.events, saga_metadata)
                        state = evolve_all(self._definition, state, action.events)
                    case Send():
                        if action.is_recorded:  # a resend: its StepStarted is in the log
                            await self._renew(saga_id)
                        else:
                            started = log.Entry(action.started_event(), saga_metadata)
                            pending += (started,)
                            announcement = started.event_id
                        if pending:
                            recorded = state = await self._record(recorded, pending)
                            pending = ()
                        assert announcement is not None, "a StepStarted announces each send"
                        outcome = await self._perform_announced(state, action, announcement)
                        pending += outcome
                        state = evolve_all(self._definition, state,
                                           (entry.event for entry in outcome))  # fmt: skip
            if pending:
                await self._record(recorded, pending)
        return action

    async def _renew(self, saga_id: str) -> None:
        """Extend this worker's lease on the saga (a resend: nothing to append with it)."""
        if not await runs.renew_lease(self._store.pool, self._store.schema, saga_id, self.owner,
                                     self._lease_until()):  # fmt: skip
            raise LeaseLost(saga_id)

    def _lease_until(self) -> datetime:
        """The end of a lease renewed now."""
        return self._clock() + timedelta(seconds=self._settings.saga_lease_s)

    async def _perform_announced(
        self, state: SagaState, send: Send, announcement: uuid.UUID
    ) -> tuple[log.Entry, ...]:
        """`_perform` the send caused by its StepStarted (`announcement`); the entries that
        record its outcome, caused by the command (the reply answers to its id)."""
        sending = context.current().caused_by(str(announcement))
        with context.bound(sending):
            events = await self._perform(state, send)
        return log.entries(events, sending.caused_by(str(send.command_id)).as_metadata())

    async def _perform(self, state: SagaState, send: Send) -> tuple[SagaEvent, ...]:
        """Send the recorded step; the events that record its outcome."""
        outcome = await self._send(state, send)
        events = after_outcome(
            self._definition, state, outcome, self._clock(), self._policy, random.random()
        )
        if isinstance(outcome, Unanswered):
            _log.warning("saga %s: %s attempt %d failed: %s", state.saga_id, send.step.name,
                         send.attempt, outcome.error)  # fmt: skip
        return events

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

    async def _record(self, state: SagaState, entries: tuple[log.Entry, ...]) -> SagaState:
        """Append `entries` (with other sagas' records, in one transaction); when this worker
        leases the saga, renew the lease in that transaction (raises LeaseLost, appending
        nothing, when it holds it no longer)."""
        return await self._recorder.record(
            state, entries, is_leased=state.saga_id in self._leased
        )


def _last_announcement(events: Sequence[RecordedEvent]) -> uuid.UUID | None:
    """The id of the log's last StepStarted (a step in flight, if any, is announced by it)."""
    for event in events[::-1]:
        if event.event_type == StepStarted.event_type:
            return event.event_id
    return None

