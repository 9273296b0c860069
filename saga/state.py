"""A saga's state as a fold of its log: `state = fold(definition, events)`.

What to do with a state is decided in `saga.decisions`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal, TypedDict

from saga.contracts import (
    SagaCompensating,
    SagaCompleted,
    SagaEvent,
    SagaFailed,
    SagaKind,
    SagaParked,
    SagaRejected,
    SagaRetried,
    SagaStarted,
    SagaStatus,
    StepFailed,
    StepRefused,
    StepStarted,
    StepSucceeded,
)
from saga.definition import SagaDefinition, StepInput
from trade_service.contracts import SettlementLeg


@dataclass(frozen=True, slots=True)
class InFlight:
    """A step whose command was recorded as sent and whose outcome is not recorded yet."""

    step: str
    command_id: uuid.UUID
    attempt: int
    is_compensation: bool


@dataclass(frozen=True, slots=True)
class SagaState:
    """Everything the log says about one saga."""

    saga_id: str
    kind: SagaKind
    legs: tuple[SettlementLeg, ...]
    deadline_at: datetime
    version: int = 1
    status: SagaStatus = SagaStatus.RUNNING
    done: tuple[str, ...] = ()
    compensations: tuple[str, ...] = ()
    compensated: tuple[str, ...] = ()
    in_flight: InFlight | None = None
    failed_attempts: int = 0
    retry_at: datetime | None = None
    is_past_pivot: bool = False
    outcome: Literal["rejected", "failed"] | None = None
    reason: str | None = None
    detail: str | None = None
    last_error: str | None = None
    parked_from: SagaStatus | None = None
    retry_series: int = 0

    def step_input(self) -> StepInput:
        """What this saga's commands are built from."""
        return StepInput(self.saga_id, self.legs, self.reason, self.detail)


def started(event: SagaStarted) -> SagaState:
    """The state of a saga just started."""
    return SagaState(event.saga_id, event.kind, event.legs, event.deadline_at)


def evolve(definition: SagaDefinition, state: SagaState, event: SagaEvent) -> SagaState:
    """The state after `event` (the version advances by one)."""
    # One `replace` per event: a fold is on the orchestrator's hot path, and each `replace`
    # of this 19-field state copies every field.
    return replace(state, version=state.version + 1, **_changes(definition, state, event))


class _Changes(TypedDict, total=False):
    """Fields of SagaState that an event changes (the version always does)."""

    status: SagaStatus
    done: tuple[str, ...]
    compensations: tuple[str, ...]
    compensated: tuple[str, ...]
    in_flight: InFlight | None
    failed_attempts: int
    retry_at: datetime | None
    is_past_pivot: bool
    outcome: Literal["rejected", "failed"] | None
    reason: str | None
    detail: str | None
    last_error: str | None
    parked_from: SagaStatus | None
    retry_series: int


def _changes(definition: SagaDefinition, state: SagaState, event: SagaEvent) -> _Changes:
    """The fields `event` changes, besides the version."""
    match event:
        case StepStarted():
            is_pivot = not event.is_compensation and event.step == definition.pivot
            return {"in_flight": InFlight(event.step, event.command_id, event.attempt,
                                          event.is_compensation),
                    "retry_at": None, "is_past_pivot": state.is_past_pivot or is_pivot}  # fmt: skip
        case StepSucceeded():
            assert state.in_flight is not None, "a reply answers a step in flight"
            changes: _Changes = {"in_flight": None, "failed_attempts": 0, "last_error": None}
            if state.in_flight.is_compensation:
                changes["compensated"] = (*state.compensated, event.step)
            else:
                changes["done"] = (*state.done, event.step)
            return changes
        case StepRefused():
            assert state.in_flight is not None, "a refusal answers a step in flight"
            return {"in_flight": None, "last_error": f"refused: {event.code}"}
        case StepFailed():
            assert state.in_flight is not None, "a failure ends a step in flight"
            return {"in_flight": None, "failed_attempts": event.attempt,
                    "retry_at": event.retry_at, "last_error": event.error}  # fmt: skip
        case SagaCompensating():
            return {"status": SagaStatus.COMPENSATING, "compensations": event.steps,
                    "failed_attempts": 0, "retry_at": None, "outcome": event.outcome,
                    "reason": event.reason, "detail": event.detail}  # fmt: skip
        case SagaParked():
            return {"status": SagaStatus.REQUIRES_INTERVENTION, "parked_from": state.status,
                    "last_error": event.error}  # fmt: skip
        case SagaRetried():
            assert state.parked_from is not None, "only a parked saga is retried"
            return {"status": state.parked_from, "parked_from": None, "failed_attempts": 0,
                    "retry_at": None, "retry_series": state.retry_series + 1}  # fmt: skip
        case SagaCompleted():
            return {"status": SagaStatus.COMPLETED}
        case SagaRejected():
            return {"status": SagaStatus.REJECTED}
        case SagaFailed():
            return {"status": SagaStatus.FAILED}
    raise AssertionError(f"a saga never records {event!r}")


def evolve_all(
    definition: SagaDefinition, state: SagaState, events: Iterable[SagaEvent]
) -> SagaState:
    """The state after `events`, in order."""
    for event in events:
        state = evolve(definition, state, event)
    return state


def fold(definition: SagaDefinition, events: Iterable[SagaEvent]) -> SagaState:
    """The state of a saga from its whole log (the first event is SagaStarted)."""
    iterator = iter(events)
    first = next(iterator)
    assert isinstance(first, SagaStarted), "a saga's log starts with SagaStarted"
    return evolve_all(definition, started(first), iterator)
