"""The timeline `ledger sagas show` prints, from a saga's recorded events (no server)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from eventstore import RecordedEvent
from ledger.cli.saga_timeline import IN_FLIGHT, collapsed, timeline

START = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def recorded(events: list[tuple[str, dict[str, Any]]]) -> list[RecordedEvent]:
    """The events as the saga's stream would hold them, 10 ms apart."""
    return [
        RecordedEvent(version, "saga-s1", version, uuid.uuid4(), event_type, data, {},
                      START + timedelta(milliseconds=10 * version), version, b"", b"")
        for version, (event_type, data) in enumerate(events, start=1)
    ]  # fmt: skip


def started(step: str, attempt: int = 1, *, is_compensation: bool = False) -> tuple[str, Any]:
    return ("StepStarted", {"step": step, "command_id": str(uuid.uuid4()), "attempt": attempt,
                            "is_compensation": is_compensation})  # fmt: skip


def failed(step: str, attempt: int) -> tuple[str, Any]:
    return ("StepFailed", {"step": step, "error": "timeout", "attempt": attempt,
                           "retry_at": START.isoformat()})  # fmt: skip


SAGA_STARTED: tuple[str, dict[str, Any]] = (
    "SagaStarted",
    {"saga_id": "s1", "kind": "transfer", "legs": [{}], "deadline_at": START.isoformat()},
)


def test_a_step_and_its_outcome_are_one_entry_with_its_duration() -> None:
    entries = timeline(recorded([SAGA_STARTED, started("assess"),
                                 ("StepSucceeded", {"step": "assess", "reply": {}})]))  # fmt: skip

    assert [(e.kind, e.step, e.outcome) for e in entries] == [
        ("started", None, None), ("step", "assess", "replied")]
    assert entries[0].detail == "transfer, 1 leg"
    assert entries[1].duration_s == 0.01


def test_a_refusal_compensations_and_the_outcome_are_shown_in_order() -> None:
    entries = timeline(recorded([
        SAGA_STARTED, started("reserve"),
        ("StepRefused", {"step": "reserve", "code": "insufficient_funds", "detail": "0 < 5"}),
        ("SagaCompensating", {"reason": "insufficient_funds", "outcome": "rejected",
                              "steps": ["release", "reject"]}),
        started("release", is_compensation=True),
        ("StepSucceeded", {"step": "release", "reply": {}}),
        ("SagaRejected", {"reason": "insufficient_funds"}),
    ]))  # fmt: skip

    assert [(e.kind, e.step, e.outcome) for e in entries] == [
        ("started", None, None), ("step", "reserve", "refused"), ("compensating", None, None),
        ("compensation", "release", "compensated"), ("rejected", None, None)]  # fmt: skip
    assert entries[1].detail == "insufficient_funds: 0 < 5"
    assert entries[2].detail == "insufficient_funds; then release, reject"


def test_a_step_still_in_flight_has_no_duration() -> None:
    entries = timeline(recorded([SAGA_STARTED, started("post")]))

    assert (entries[-1].outcome, entries[-1].duration_s) == (IN_FLIGHT, None)


def test_parking_and_an_operator_retry_are_turns_with_their_reasons() -> None:
    entries = timeline(recorded([
        SAGA_STARTED, ("SagaParked", {"step": "complete", "error": "refused: not_now"}),
        ("SagaRetried", {"by": "ops"}),
    ]))  # fmt: skip

    assert [(e.kind, e.step, e.detail) for e in entries[1:]] == [
        ("parked", "complete", "refused: not_now"), ("retried", None, "by ops")]


def test_a_long_run_of_failed_attempts_is_cut_to_its_ends() -> None:
    events = [SAGA_STARTED]
    for attempt in range(1, 11):
        events += [started("post", attempt), failed("post", attempt)]
    events += [started("post", 11), ("StepSucceeded", {"step": "post", "reply": {}})]

    shown = collapsed(timeline(recorded(events)))

    assert [(e.kind, e.attempt, e.outcome) for e in shown] == [
        ("started", None, None), ("step", 1, "failed"), ("step", 2, "failed"),
        ("skipped", None, None), ("step", 10, "failed"), ("step", 11, "replied")]  # fmt: skip
    assert shown[3].detail == "7 more failed attempts"


def test_a_short_run_of_failed_attempts_is_shown_whole() -> None:
    events = [SAGA_STARTED]
    for attempt in range(1, 5):
        events += [started("assess", attempt), failed("assess", attempt)]

    assert len(collapsed(timeline(recorded(events)))) == 5
