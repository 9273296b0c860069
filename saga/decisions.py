"""The pure decisions that drive a saga: what to do next for a state, and which events
follow an outcome (`saga.state` folds the log into that state).

    action = next_action(definition, state, now)
    events = after_outcome(definition, state, outcome, now, policy, jitter)

Nothing here does I/O: the orchestrator records what `after_outcome` decides and performs
what `next_action` asks, so every branch of the policy is tested without a server.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from saga.contracts import (
    FINAL_STATUSES,
    SagaCompensating,
    SagaCompleted,
    SagaEvent,
    SagaFailed,
    SagaParked,
    SagaRejected,
    SagaStatus,
    StepFailed,
    StepRefused,
    StepStarted,
    StepSucceeded,
)
from saga.definition import SagaDefinition, Step, command_id
from saga.state import InFlight, SagaState


@dataclass(frozen=True, slots=True)
class Send:
    """Send `step`'s command; `is_recorded`: its StepStarted is in the log already (resend)."""

    step: Step
    command_id: uuid.UUID
    attempt: int
    is_compensation: bool
    is_recorded: bool

    def started_event(self) -> StepStarted:
        """The event that records this send before it happens."""
        return StepStarted(step=self.step.name, command_id=self.command_id,
                           attempt=self.attempt, is_compensation=self.is_compensation)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing to do before `until`."""

    until: datetime


@dataclass(frozen=True, slots=True)
class Record:
    """Append `events` (a decision that needs no participant: finish, or compensate)."""

    events: tuple[SagaEvent, ...]


@dataclass(frozen=True, slots=True)
class Idle:
    """Nothing to do: the saga is final, or parked until an operator retries it."""


Action = Send | Wait | Record | Idle


def next_action(definition: SagaDefinition, state: SagaState, now: datetime) -> Action:
    """What the orchestrator must do next for `state` at `now`."""
    if state.status in FINAL_STATUSES or state.status is SagaStatus.REQUIRES_INTERVENTION:
        return Idle()
    if state.in_flight is not None:  # recorded as sent, outcome unknown: send it again
        flight = state.in_flight
        return Send(definition.step(flight.step), flight.command_id, flight.attempt,
                    flight.is_compensation, is_recorded=True)  # fmt: skip
    if state.status is SagaStatus.RUNNING:
        return _forward(definition, state, now)
    return _compensating(definition, state, now)


def _forward(definition: SagaDefinition, state: SagaState, now: datetime) -> Action:
    remaining = [step for step in definition.steps if step.name not in state.done]
    if not state.is_past_pivot and now >= state.deadline_at:
        # A step whose attempts went unanswered (it waits for its next try) may have been
        # applied all the same, by a slow participant: undo it too, as when its retries run
        # out (void and release are safe for what never happened, and refuse it if it
        # arrives later).
        tried = (remaining[0].name,) if state.failed_attempts else ()
        plan = _plan(definition, (*state.done, *tried), "failed")
        return Record((SagaCompensating(reason="deadline_exceeded", outcome="failed",
                                        detail=f"the saga's deadline {state.deadline_at} passed",
                                        steps=plan),))  # fmt: skip
    if state.retry_at is not None and now < state.retry_at:
        until = state.retry_at if state.is_past_pivot else min(state.retry_at, state.deadline_at)
        return Wait(until)
    if not remaining:
        return Record((SagaCompleted(),))
    return _send(remaining[0], state, is_compensation=False)


def _compensating(definition: SagaDefinition, state: SagaState, now: datetime) -> Action:
    if state.retry_at is not None and now < state.retry_at:
        return Wait(state.retry_at)
    remaining = state.compensations[len(state.compensated):]
    if not remaining:
        final: SagaEvent
        if state.outcome == "rejected":
            final = SagaRejected(reason=state.reason or "refused", detail=state.detail)
        else:
            final = SagaFailed(reason=state.reason or "failed", detail=state.detail)
        return Record((final,))
    return _send(definition.compensations[remaining[0]], state, is_compensation=True)


def _send(step: Step, state: SagaState, *, is_compensation: bool) -> Send:
    cid = command_id(state.saga_id, step.name, state.retry_series)
    return Send(step, cid, state.failed_attempts + 1, is_compensation, is_recorded=False)


def _plan(
    definition: SagaDefinition, done: Iterable[str], outcome: Literal["rejected", "failed"]
) -> tuple[str, ...]:
    """Compensations of `done` steps in reverse order, then the final notice."""
    undo = [definition.step(name).compensation for name in reversed(tuple(done))]
    notice = definition.reject if outcome == "rejected" else definition.fail
    return (*(name for name in undo if name is not None), notice)


# --- what an outcome means ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Replied:
    reply: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Refused:
    code: str
    detail: str | None


@dataclass(frozen=True, slots=True)
class Unanswered:
    error: str


Outcome = Replied | Refused | Unanswered


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often a step is tried, and the pause between tries (exponential, jittered)."""

    max_attempts: int
    backoff_first_s: float
    backoff_max_s: float

    def __post_init__(self) -> None:
        assert self.max_attempts >= 1, "a step is tried at least once"
        assert 0 < self.backoff_first_s <= self.backoff_max_s, "backoff bounds are ordered"

    def retry_at(self, now: datetime, attempt: int, jitter: float) -> datetime:
        """When to try again after `attempt` failed; `jitter` in [0, 1] spreads half of it."""
        assert 0.0 <= jitter <= 1.0, "jitter is a fraction"
        ceiling_s = min(self.backoff_max_s, self.backoff_first_s * 2.0 ** min(attempt - 1, 60))
        return now + timedelta(seconds=ceiling_s / 2 + jitter * ceiling_s / 2)


def after_outcome(
    definition: SagaDefinition,
    state: SagaState,
    outcome: Outcome,
    now: datetime,
    policy: RetryPolicy,
    jitter: float,
) -> tuple[SagaEvent, ...]:
    """The events that record `outcome` of the step in flight, and what it leads to."""
    flight = state.in_flight
    assert flight is not None, "an outcome answers a step in flight"
    match outcome:
        case Replied():
            return (StepSucceeded(step=flight.step, reply=outcome.reply),)
        case Refused():
            return _after_refusal(definition, state, flight, outcome)
        case Unanswered():
            return _after_failure(definition, state, flight, outcome, now, policy, jitter)


def _after_refusal(
    definition: SagaDefinition, state: SagaState, flight: InFlight, refusal: Refused
) -> tuple[SagaEvent, ...]:
    refused = StepRefused(step=flight.step, code=refusal.code, detail=refusal.detail)
    # A refusal is definitive and applied nothing, so even the pivot may still be undone.
    may_undo = not flight.is_compensation and (
        flight.step == definition.pivot or definition.is_before_pivot(flight.step)
    )
    if may_undo:
        plan = _plan(definition, state.done, "rejected")
        return (refused, SagaCompensating(reason=refusal.code, detail=refusal.detail,
                                          outcome="rejected", steps=plan))  # fmt: skip
    error = f"{flight.step} refused ({refusal.code}): {refusal.detail or 'no detail'}"
    return (refused, SagaParked(step=flight.step, error=error))


def _after_failure(
    definition: SagaDefinition,
    state: SagaState,
    flight: InFlight,
    failure: Unanswered,
    now: datetime,
    policy: RetryPolicy,
    jitter: float,
) -> tuple[SagaEvent, ...]:
    # From the pivot on, and while compensating, there is no other way to a final state:
    # such a step is retried until it is answered. An outage, however long, only delays
    # the saga; parking it would leave its transfer pending and its holds open until an
    # operator came, though nothing but the outage was wrong. Only a refusal parks.
    must_finish = flight.is_compensation or state.is_past_pivot
    if flight.attempt < policy.max_attempts or must_finish:
        retry_at = policy.retry_at(now, flight.attempt, jitter)
        return (StepFailed(step=flight.step, error=failure.error, attempt=flight.attempt,
                           retry_at=retry_at),)  # fmt: skip
    failed = StepFailed(step=flight.step, error=failure.error, attempt=flight.attempt,
                        retry_at=now)  # fmt: skip
    # Unanswered, the step may have been applied: undo it too (void and release are safe
    # for what never happened).
    plan = _plan(definition, (*state.done, flight.step), "failed")
    return (failed, SagaCompensating(reason="retries_exhausted", detail=failure.error,
                                     outcome="failed", steps=plan))  # fmt: skip
