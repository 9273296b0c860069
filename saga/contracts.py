"""The saga's own language: the events of a saga's log, one stream `saga-{saga_id}` each.

The log is the saga's only truth: every step's command is recorded (StepStarted, with its
`command_id`) before it is sent, and its outcome before the next step, so any instance can
fold the log and resume exactly where another stopped, resending the same command ids.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from trade_service.contracts import SettlementLeg

CATEGORY = "saga"
SagaKind = Literal["transfer", "trade"]


class SagaStatus(StrEnum):
    """Where a saga stands. `requires_intervention` waits for an operator's retry."""

    RUNNING = "running"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    REJECTED = "rejected"
    FAILED = "failed"
    REQUIRES_INTERVENTION = "requires_intervention"


FINAL_STATUSES = frozenset({SagaStatus.COMPLETED, SagaStatus.REJECTED, SagaStatus.FAILED})


class SagaEvent(BaseModel):
    """Base of the saga's events: frozen, strict about their fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    event_type: ClassVar[str]


class SagaStarted(SagaEvent):
    event_type: ClassVar[str] = "SagaStarted"
    saga_id: str
    kind: SagaKind
    legs: tuple[SettlementLeg, ...]
    deadline_at: datetime


class StepStarted(SagaEvent):
    """A step's command is about to be sent (recorded first, so a resend reuses its id)."""

    event_type: ClassVar[str] = "StepStarted"
    step: str
    command_id: uuid.UUID
    attempt: int
    is_compensation: bool


class StepSucceeded(SagaEvent):
    event_type: ClassVar[str] = "StepSucceeded"
    step: str
    reply: dict[str, Any]


class StepRefused(SagaEvent):
    """The participant declined: a definitive answer, nothing of the step was applied."""

    event_type: ClassVar[str] = "StepRefused"
    step: str
    code: str
    detail: str | None = None


class StepFailed(SagaEvent):
    """No usable answer (timeout, error reply); the step is tried again at `retry_at`."""

    event_type: ClassVar[str] = "StepFailed"
    step: str
    error: str
    attempt: int
    retry_at: datetime


class SagaCompensating(SagaEvent):
    """Undo: run `steps` (compensations in reverse order, then the final notice) in order."""

    event_type: ClassVar[str] = "SagaCompensating"
    reason: str
    detail: str | None = None
    outcome: Literal["rejected", "failed"]
    steps: tuple[str, ...]


class SagaCompleted(SagaEvent):
    event_type: ClassVar[str] = "SagaCompleted"


class SagaRejected(SagaEvent):
    event_type: ClassVar[str] = "SagaRejected"
    reason: str
    detail: str | None = None


class SagaFailed(SagaEvent):
    event_type: ClassVar[str] = "SagaFailed"
    reason: str
    detail: str | None = None


class SagaParked(SagaEvent):
    """The saga cannot go on by itself (requires_intervention) until an operator retries."""

    event_type: ClassVar[str] = "SagaParked"
    step: str
    error: str


class SagaRetried(SagaEvent):
    """An operator sent a parked saga on again; its steps get fresh attempts."""

    event_type: ClassVar[str] = "SagaRetried"
    by: str


EVENT_TYPES: dict[str, type[SagaEvent]] = {
    model.event_type: model
    for model in (
        SagaStarted, StepStarted, StepSucceeded, StepRefused, StepFailed, SagaCompensating,
        SagaCompleted, SagaRejected, SagaFailed, SagaParked, SagaRetried,
    )
}


def stream_of(saga_id: str) -> str:
    """The stream of a saga's log."""
    return f"{CATEGORY}-{saga_id}"


def event_of(event_type: str, data: dict[str, Any]) -> SagaEvent:
    """The saga event stored as `event_type` with `data`."""
    return EVENT_TYPES[event_type].model_validate(data)
