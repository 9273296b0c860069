"""A saga's log as an operator reads it, built from its recorded events (pure, no I/O).

Each step attempt is one entry: when its command was sent, how it ended (replied, refused,
failed, compensated, or still in flight) and how long that took. Between them stand the
saga's own turns: started, compensating, parked, retried, and its outcome.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from itertools import groupby
from typing import Any, Final

from eventstore import RecordedEvent
from saga.contracts import SagaStatus
from saga.state import SagaState

IN_FLIGHT: Final = "in flight"
_STEP_OUTCOMES: Final = frozenset({"StepSucceeded", "StepRefused", "StepFailed"})
_TURNS: Final = {
    "SagaStarted": "started",
    "SagaCompensating": "compensating",
    "SagaParked": "parked",
    "SagaRetried": "retried",
    "SagaCompleted": "completed",
    "SagaRejected": "rejected",
    "SagaFailed": "failed",
}


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of the timeline: a step attempt (`kind` "step" or "compensation") or a turn
    of the saga itself (`kind` "started", "parked", ...)."""

    at: datetime
    kind: str
    step: str | None = None
    attempt: int | None = None
    outcome: str | None = None
    ended_at: datetime | None = None
    detail: str | None = None

    @property
    def is_step(self) -> bool:
        """Whether this entry is a step attempt (forward or compensation)."""
        return self.kind in ("step", "compensation")

    @property
    def duration_s(self) -> float | None:
        """How long the step took to end; None for turns and steps still in flight."""
        if self.ended_at is None:
            return None
        return (self.ended_at - self.at).total_seconds()


@dataclass(frozen=True, slots=True)
class Story:
    """Everything `ledger sagas show` prints about one saga."""

    state: SagaState
    entries: tuple[Entry, ...]
    started_at: datetime
    updated_at: datetime

    @property
    def parked(self) -> Entry | None:
        """The turn that parked the saga, while it waits for an operator."""
        if self.state.status is not SagaStatus.REQUIRES_INTERVENTION:
            return None
        return next((e for e in reversed(self.entries) if e.kind == "parked"), None)


def story(state: SagaState, events: Sequence[RecordedEvent]) -> Story:
    """The saga's story from its folded state and its whole log (at least SagaStarted)."""
    assert events, "a saga's log starts with SagaStarted"
    return Story(state, tuple(timeline(events)), events[0].recorded_at, events[-1].recorded_at)


def timeline(events: Sequence[RecordedEvent]) -> list[Entry]:
    """The entries of a saga's log, in its order: a step's outcome completes its entry."""
    entries: list[Entry] = []
    open_step: int | None = None
    for event in events:
        data: dict[str, Any] = event.data
        if event.event_type == "StepStarted":
            kind = "compensation" if data["is_compensation"] else "step"
            entries.append(Entry(event.recorded_at, kind, data["step"], data["attempt"],
                                 outcome=IN_FLIGHT))  # fmt: skip
            open_step = len(entries) - 1
        elif event.event_type in _STEP_OUTCOMES and open_step is not None:
            entries[open_step] = _ended(entries[open_step], event)
            open_step = None
        else:
            entries.append(_turn(event))
    return entries


def collapsed(entries: Sequence[Entry], keep: int = 2) -> list[Entry]:
    """`entries` with each long run of failed attempts of one step cut to its first `keep`
    and its last attempt, around one "skipped" entry that counts the rest: a saga that
    retried for hours past its pivot stays readable."""
    shown: list[Entry] = []
    for key, group in groupby(entries, key=_failure_key):
        run = list(group)
        if key is None or len(run) <= keep + 2:
            shown += run
            continue
        hidden = len(run) - keep - 1
        gap = Entry(run[keep].at, "skipped", run[keep].step,
                    detail=f"{hidden} more failed attempts")  # fmt: skip
        shown += [*run[:keep], gap, run[-1]]
    return shown


def _failure_key(entry: Entry) -> tuple[str | None, str] | None:
    return (entry.step, entry.kind) if entry.outcome == "failed" else None


def _ended(entry: Entry, event: RecordedEvent) -> Entry:
    data = event.data
    match event.event_type:
        case "StepSucceeded":
            outcome = "compensated" if entry.kind == "compensation" else "replied"
            detail = None
        case "StepRefused":
            outcome, detail = "refused", _joined(data["code"], data.get("detail"))
        case _:
            outcome, detail = "failed", data["error"]
    return replace(entry, outcome=outcome, ended_at=event.recorded_at, detail=detail)


def _turn(event: RecordedEvent) -> Entry:
    data = event.data
    kind = _TURNS.get(event.event_type, event.event_type)
    detail: str | None = None
    match event.event_type:
        case "SagaStarted":
            legs = len(data["legs"])
            detail = f"{data['kind']}, {legs} leg{'s' if legs != 1 else ''}"
        case "SagaCompensating":
            # The refusal's detail is on the step that was refused; the reason code suffices.
            detail = f"{data['reason']}; then {', '.join(data['steps'])}"
        case "SagaParked":
            return Entry(event.recorded_at, kind, step=data["step"], detail=data["error"])
        case "SagaRetried":
            detail = f"by {data['by']}"
        case "SagaRejected" | "SagaFailed":
            detail = data["reason"]
    return Entry(event.recorded_at, kind, detail=detail)


def _joined(code: str, detail: str | None) -> str:
    return f"{code}: {detail}" if detail else code
