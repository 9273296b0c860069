"""The saga's pure policy: what each log means (fold) and what comes next (next_action),
for every branch: success, refusal before and at the pivot, retries exhausted, retries
after the pivot, failing compensations, the deadline, and an operator's retry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from saga.contracts import (
    SagaCompensating,
    SagaCompleted,
    SagaEvent,
    SagaFailed,
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
from saga.decisions import (
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
from saga.definition import SETTLE_LEGS, command_id
from saga.state import SagaState, evolve, fold
from trade_service.contracts import SettlementLeg

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
POLICY = RetryPolicy(max_attempts=3, backoff_first_s=1.0, backoff_max_s=8.0)
LEG = SettlementLeg(leg_id="leg-1", from_account="a", to_account="b", amount_minor=100,
                    currency="USD")  # fmt: skip
START = SagaStarted(saga_id="tr-1", kind="transfer", legs=(LEG,),
                    deadline_at=NOW + timedelta(minutes=5))  # fmt: skip


def state_of(*events: SagaEvent) -> SagaState:
    return fold(SETTLE_LEGS, (START, *events))


def drive(state: SagaState, outcome_of: dict[str, Outcome], now: datetime = NOW) -> SagaState:
    """Run the saga to rest: each send answered by `outcome_of[step]` (default: success)."""
    for _ in range(50):
        action = next_action(SETTLE_LEGS, state, now)
        if isinstance(action, Idle | Wait):
            return state
        if isinstance(action, Record):
            state = fold_more(state, action.events)
            continue
        assert isinstance(action, Send)
        if not action.is_recorded:
            state = fold_more(state, (action.started_event(),))
        outcome = outcome_of.get(action.step.name, Replied({}))
        state = fold_more(state, after_outcome(SETTLE_LEGS, state, outcome, now, POLICY, 0.5))
    raise AssertionError("the saga never came to rest")


def fold_more(state: SagaState, events: tuple[SagaEvent, ...]) -> SagaState:
    for event in events:
        state = evolve(SETTLE_LEGS, state, event)
    return state


def sent_steps(state: SagaState) -> tuple[str, ...]:
    return (*state.done, *state.compensated)


def test_a_new_saga_assesses_first_with_its_deterministic_command_id() -> None:
    action = next_action(SETTLE_LEGS, state_of(), NOW)

    assert isinstance(action, Send)
    assert action.step.name == "assess"
    assert action.command_id == command_id("tr-1", "assess", 0)
    assert action.attempt == 1
    assert not action.is_recorded


def test_every_step_succeeding_completes_the_saga() -> None:
    state = drive(state_of(), {})

    assert state.status is SagaStatus.COMPLETED
    assert state.done == ("assess", "reserve", "post", "commit", "complete")
    assert next_action(SETTLE_LEGS, state, NOW) == Idle()


def test_a_step_recorded_but_unanswered_is_resent_with_the_same_command_id() -> None:
    cid = command_id("tr-1", "assess", 0)
    state = state_of(StepStarted(step="assess", command_id=cid, attempt=1,
                                 is_compensation=False))  # fmt: skip

    action = next_action(SETTLE_LEGS, state, NOW + timedelta(hours=1))

    assert isinstance(action, Send)
    assert (action.step.name, action.command_id, action.is_recorded) == ("assess", cid, True)


def test_a_refusal_by_risk_rejects_without_compensating_anything() -> None:
    state = drive(state_of(), {"assess": Refused("limit_exceeded", "too much")})

    assert state.status is SagaStatus.REJECTED
    assert state.compensations == ("reject",)
    assert (state.reason, state.detail) == ("limit_exceeded", "too much")


def test_a_refused_reserve_releases_the_assessment_then_rejects() -> None:
    state = drive(state_of(), {"reserve": Refused("insufficient_funds", None)})

    assert state.status is SagaStatus.REJECTED
    assert state.compensated == ("release", "reject")
    assert state.outcome == "rejected"


def test_a_refused_pivot_is_still_undone_in_reverse_order() -> None:
    state = drive(state_of(), {"post": Refused("account_frozen", None)})

    assert state.status is SagaStatus.REJECTED
    assert state.compensated == ("void", "release", "reject")


def test_a_failed_attempt_waits_for_its_backoff() -> None:
    state = drive(state_of(), {"reserve": Unanswered("timeout")})

    action = next_action(SETTLE_LEGS, state, NOW)

    assert state.failed_attempts == 1
    assert action == Wait(NOW + timedelta(seconds=0.75))  # half of 1s plus half jittered


def test_the_next_attempt_after_a_failure_keeps_the_command_id_and_counts() -> None:
    state = drive(state_of(), {"reserve": Unanswered("timeout")})

    action = next_action(SETTLE_LEGS, state, NOW + timedelta(seconds=1))

    assert isinstance(action, Send)
    assert action.command_id == command_id("tr-1", "reserve", 0)
    assert action.attempt == 2


def test_retries_exhausted_before_the_pivot_compensate_the_step_too_then_fail() -> None:
    state = state_of()
    for minute in range(POLICY.max_attempts):
        later = NOW + timedelta(seconds=minute * 10)
        state = drive(state, {"reserve": Unanswered("timeout")}, later)

    assert state.status is SagaStatus.FAILED
    assert state.compensated == ("void", "release", "fail")
    assert state.reason == "retries_exhausted"


def test_after_the_pivot_a_failing_step_is_retried_without_limit() -> None:
    state = state_of()
    for second in range(0, 50, 10):
        state = drive(state, {"commit": Unanswered("risk down")}, NOW + timedelta(seconds=second))

    assert state.status is SagaStatus.RUNNING
    assert state.failed_attempts == 5 > POLICY.max_attempts
    assert state.retry_at is not None
    state = drive(state, {}, NOW + timedelta(minutes=10))
    assert state.status is SagaStatus.COMPLETED


def test_a_pivot_unanswered_is_retried_past_the_attempt_limit() -> None:
    state = state_of()
    for second in range(0, 100, 10):
        state = drive(state, {"post": Unanswered("account down")}, NOW + timedelta(seconds=second))

    assert state.status is SagaStatus.RUNNING
    assert state.is_past_pivot
    assert state.failed_attempts == 10


def test_a_refusal_after_the_pivot_parks_the_saga() -> None:
    state = drive(state_of(), {"commit": Refused("unknown_exposure", "?")})

    assert state.status is SagaStatus.REQUIRES_INTERVENTION
    assert state.last_error is not None
    assert "commit refused" in state.last_error
    assert next_action(SETTLE_LEGS, state, NOW) == Idle()


def test_a_compensation_is_retried_until_answered_however_long_its_participant_is_down(
) -> None:
    state = state_of()
    outcomes: dict[str, Outcome] = {"reserve": Refused("insufficient_funds", None),
                                    "release": Unanswered("risk down")}  # fmt: skip
    for second in range(0, 30 * POLICY.max_attempts, 10):
        state = drive(state, outcomes, NOW + timedelta(seconds=second))

    assert state.status is SagaStatus.COMPENSATING
    assert state.failed_attempts > POLICY.max_attempts
    assert state.last_error is not None
    assert "risk down" in state.last_error
    back = drive(state, {}, NOW + timedelta(seconds=30 * POLICY.max_attempts))
    assert back.status is SagaStatus.REJECTED


def test_a_refused_compensation_parks_the_saga_at_once() -> None:
    outcomes: dict[str, Outcome] = {"reserve": Refused("insufficient_funds", None),
                                    "release": Refused("bug", None)}  # fmt: skip
    state = drive(state_of(), outcomes)

    assert state.status is SagaStatus.REQUIRES_INTERVENTION


def test_an_operator_retry_resumes_the_parked_step_under_a_new_command_id() -> None:
    outcomes: dict[str, Outcome] = {"reserve": Refused("insufficient_funds", None),
                                    "release": Refused("bug", None)}  # fmt: skip
    parked = drive(state_of(), outcomes)

    retried = fold_more(parked, (SagaRetried(by="ops"),))
    action = next_action(SETTLE_LEGS, retried, NOW)

    assert retried.status is SagaStatus.COMPENSATING
    assert isinstance(action, Send)
    assert action.step.name == "release"
    assert action.command_id == command_id("tr-1", "release", 1)
    assert drive(retried, {}).status is SagaStatus.REJECTED


def test_the_deadline_before_the_pivot_compensates_and_fails() -> None:
    cid = command_id("tr-1", "assess", 0)
    state = state_of(StepStarted(step="assess", command_id=cid, attempt=1, is_compensation=False),
                     StepSucceeded(step="assess", reply={}))  # fmt: skip

    action = next_action(SETTLE_LEGS, state, START.deadline_at)

    assert isinstance(action, Record)
    (event,) = action.events
    assert isinstance(event, SagaCompensating)
    assert (event.reason, event.outcome, event.steps) == ("deadline_exceeded", "failed",
                                                          ("release", "fail"))  # fmt: skip


def test_the_deadline_between_attempts_undoes_the_unanswered_step_too() -> None:
    # The reserve timed out and waits for its next try: a slow account service may still
    # place its holds, so the deadline voids them (or cancels them before they arrive).
    state = drive(state_of(), {"reserve": Unanswered("timeout")})
    assert state.failed_attempts == 1

    action = next_action(SETTLE_LEGS, state, START.deadline_at)

    assert isinstance(action, Record)
    (event,) = action.events
    assert isinstance(event, SagaCompensating)
    assert (event.reason, event.steps) == ("deadline_exceeded", ("void", "release", "fail"))


def test_a_wait_before_the_pivot_ends_no_later_than_the_deadline() -> None:
    late = START.deadline_at - timedelta(milliseconds=100)
    state = drive(state_of(), {"reserve": Unanswered("timeout")}, late)

    assert next_action(SETTLE_LEGS, state, late) == Wait(START.deadline_at)


def test_the_deadline_does_not_stop_a_saga_past_its_pivot() -> None:
    state = drive(state_of(), {"commit": Unanswered("risk down")})

    action = next_action(SETTLE_LEGS, state, START.deadline_at + timedelta(hours=1))

    assert isinstance(action, Send)
    assert action.step.name == "commit"


@pytest.mark.parametrize(
    "final", [SagaCompleted(), SagaRejected(reason="r"), SagaFailed(reason="f")]
)
def test_a_final_saga_does_nothing_more(final: SagaEvent) -> None:
    assert next_action(SETTLE_LEGS, state_of(final), NOW) == Idle()


def test_a_parked_event_records_the_status_it_came_from() -> None:
    state = state_of(SagaParked(step="assess", error="x"))

    assert state.parked_from is SagaStatus.RUNNING


def test_backoff_doubles_up_to_its_ceiling_and_jitters_half() -> None:
    assert POLICY.retry_at(NOW, 1, 0.0) == NOW + timedelta(seconds=0.5)
    assert POLICY.retry_at(NOW, 3, 1.0) == NOW + timedelta(seconds=4)
    assert POLICY.retry_at(NOW, 30, 1.0) == NOW + timedelta(seconds=8)


def test_every_outcome_event_follows_a_step_in_flight() -> None:
    state = state_of(
        StepStarted(step="assess", command_id=command_id("tr-1", "assess", 0), attempt=1,
                    is_compensation=False),
        StepSucceeded(step="assess", reply={}),
        StepStarted(step="reserve", command_id=command_id("tr-1", "reserve", 0), attempt=1,
                    is_compensation=False),
        StepRefused(step="reserve", code="insufficient_funds"),
        SagaCompensating(reason="insufficient_funds", outcome="rejected",
                         steps=("release", "reject")),
        StepStarted(step="release", command_id=command_id("tr-1", "release", 0), attempt=1,
                    is_compensation=True),
        StepFailed(step="release", error="t", attempt=1, retry_at=NOW),
    )  # fmt: skip

    assert state.version == 8
    assert state.status is SagaStatus.COMPENSATING
    with pytest.raises(AssertionError):
        fold_more(state, (StepSucceeded(step="release", reply={}),))
