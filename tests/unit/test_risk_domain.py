"""The risk domain without servers: every refusal reason, exposures, the rolling windows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from risk_service.contracts import (
    AccountBlocked,
    AccountUnblocked,
    ExposureCancelled,
    ExposureCommitted,
    ExposureReleased,
    ExposureReserved,
    Limits,
    LimitsSet,
    MovementRefused,
    RefusalReason,
    RiskEvent,
)
from risk_service.domain import (
    AccountView,
    MovementRequest,
    RiskState,
    assess,
    block,
    commit,
    fold,
    initial_state,
    release,
    set_limits,
    unblock,
)
from risk_service.projections import state_from_row, state_to_json

NOW = datetime(2024, 5, 1, 12, 0, 30, tzinfo=UTC)
DEFAULTS = Limits(max_transfer_minor=1_000, daily_outflow_minor=2_000, max_movements_per_minute=5)
PAYER = AccountView("alice", "USD", "open")
PAYEE = AccountView("bob", "USD", "open")


def movement(
    amount_minor: int = 100,
    leg_id: str = "leg-1",
    *,
    transfer_id: str = "t-1",
    payer: AccountView | None = PAYER,
    payee: AccountView | None = PAYEE,
    currency: str = "USD",
) -> MovementRequest:
    return MovementRequest(transfer_id, leg_id, amount_minor, currency, payer, payee)


def decide(
    state: RiskState, request: MovementRequest, now: datetime = NOW, defaults: Limits = DEFAULTS
) -> tuple[RiskState, list[RiskEvent]]:
    events = assess(state, request, defaults, now)
    return fold(state, events), events


def refusal(events: list[RiskEvent]) -> RefusalReason:
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, MovementRefused), f"expected a refusal, got {event!r}"
    return event.reason


def approved(state: RiskState, *amounts: int, now: datetime = NOW) -> RiskState:
    """`state` after approving one movement per amount (transfer t-<i>)."""
    for index, amount in enumerate(amounts):
        state, events = decide(state, movement(amount, transfer_id=f"t-{index}"), now)
        assert isinstance(events[0], ExposureReserved)
    return state


def given() -> RiskState:
    return initial_state("alice")


# --- approvals ---------------------------------------------------------------------------


def test_a_movement_within_every_limit_is_approved_with_the_limits_in_force() -> None:
    state, events = decide(given(), movement(500))

    assert len(events) == 1
    reserved = events[0]
    assert isinstance(reserved, ExposureReserved)
    assert reserved.amount_minor == 500
    assert reserved.limits == DEFAULTS
    assert reserved.decided_at == NOW
    assert state.open_exposure_minor == 500


def test_assessing_an_open_exposure_again_changes_nothing() -> None:
    state, _ = decide(given(), movement(500))

    _, events = decide(state, movement(500))

    assert events == []


def test_an_accounts_own_limits_take_precedence_over_the_defaults() -> None:
    state = fold(given(), set_limits(given(), Limits(max_transfer_minor=50)))

    _, events = decide(state, movement(60))
    _, other = decide(given(), movement(60))

    assert refusal(events) is RefusalReason.LIMIT_EXCEEDED
    assert isinstance(events[0], MovementRefused)
    assert events[0].limits.max_transfer_minor == 50
    assert events[0].limits.daily_outflow_minor == DEFAULTS.daily_outflow_minor
    assert isinstance(other[0], ExposureReserved)


def test_setting_the_same_limits_again_records_nothing() -> None:
    state = fold(given(), set_limits(given(), Limits(max_transfer_minor=50)))

    assert set_limits(state, Limits(max_transfer_minor=50)) == []
    assert isinstance(set_limits(state, Limits())[0], LimitsSet)


def test_no_limits_at_all_approves_any_amount() -> None:
    _, events = decide(given(), movement(10**18), defaults=Limits())

    assert isinstance(events[0], ExposureReserved)


# --- each refusal reason -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (movement(payer=None), RefusalReason.UNKNOWN_ACCOUNT),
        (movement(payee=None), RefusalReason.UNKNOWN_ACCOUNT),
        (movement(payer=AccountView("alice", "USD", "closed")), RefusalReason.ACCOUNT_CLOSED),
        (movement(payee=AccountView("bob", "USD", "closed")), RefusalReason.ACCOUNT_CLOSED),
        (movement(payer=AccountView("alice", "USD", "frozen")), RefusalReason.ACCOUNT_FROZEN),
        (movement(payee=AccountView("bob", "USD", "frozen")), RefusalReason.ACCOUNT_FROZEN),
        (movement(currency="EUR"), RefusalReason.CURRENCY_MISMATCH),
        (movement(payee=AccountView("bob", "EUR", "open")), RefusalReason.CURRENCY_MISMATCH),
        (movement(1_001), RefusalReason.LIMIT_EXCEEDED),
    ],
)
def test_a_movement_is_refused_with_its_reason(
    request_: MovementRequest, reason: RefusalReason
) -> None:
    state, events = decide(given(), request_)

    assert refusal(events) is reason
    assert state.open_exposure_minor == 0
    assert state.version == 1


def test_a_refusal_records_the_amount_and_the_limits_in_force() -> None:
    _, events = decide(given(), movement(1_001))

    refused = events[0]
    assert isinstance(refused, MovementRefused)
    assert (refused.transfer_id, refused.leg_id, refused.amount_minor) == ("t-1", "leg-1", 1_001)
    assert refused.limits == DEFAULTS
    assert "1001" in refused.detail


def test_a_blocked_account_is_refused_until_unblocked() -> None:
    state = fold(given(), block(given(), "fraud review"))

    _, refused = decide(state, movement())
    state = fold(state, unblock(state, "cleared"))
    _, approved_events = decide(state, movement())

    assert refusal(refused) is RefusalReason.ACCOUNT_BLOCKED
    assert isinstance(refused[0], MovementRefused)
    assert "fraud review" in refused[0].detail
    assert isinstance(approved_events[0], ExposureReserved)


def test_blocking_twice_or_unblocking_an_unblocked_account_records_nothing() -> None:
    blocked = fold(given(), block(given(), "review"))

    assert block(blocked, "again") == []
    assert unblock(given(), "nothing to lift") == []
    assert isinstance(block(given(), "x")[0], AccountBlocked)
    assert isinstance(unblock(blocked, "y")[0], AccountUnblocked)


def test_daily_outflow_counts_committed_and_open_exposure() -> None:
    state = approved(given(), 900)
    state = fold(state, commit(state, "t-0", "leg-1", NOW))
    state = approved(state, 900)

    _, events = decide(state, movement(201, transfer_id="t-9"))

    assert refusal(events) is RefusalReason.DAILY_OUTFLOW_EXCEEDED


def test_open_exposure_over_its_limit_is_refused() -> None:
    limits = Limits(max_transfer_minor=1_000, max_open_exposure_minor=1_500)
    state = given()
    for index in range(3):
        state, _ = decide(state, movement(500, transfer_id=f"t-{index}"), defaults=limits)

    _, events = decide(state, movement(1, transfer_id="t-9"), defaults=limits)

    assert refusal(events) is RefusalReason.EXPOSURE_EXCEEDED


def test_more_movements_per_minute_than_allowed_is_velocity() -> None:
    state = given()
    for index in range(5):
        state, _ = decide(state, movement(1, transfer_id=f"t-{index}"),
                          NOW + timedelta(seconds=index))

    _, events = decide(state, movement(1, transfer_id="t-9"), NOW + timedelta(seconds=10))

    assert refusal(events) is RefusalReason.VELOCITY


def test_velocity_allows_movements_again_a_minute_later() -> None:
    state = approved(given(), 1, 1, 1, 1, 1)

    _, events = decide(state, movement(1, transfer_id="t-9"), NOW + timedelta(seconds=61))

    assert isinstance(events[0], ExposureReserved)


def test_refusals_do_not_count_toward_velocity() -> None:
    state = given()
    for index in range(10):
        state, _ = decide(state, movement(5_000, transfer_id=f"r-{index}"))

    _, events = decide(state, movement(1))

    assert isinstance(events[0], ExposureReserved)


def test_the_account_status_is_checked_before_the_block_and_the_limits() -> None:
    state = fold(given(), block(given(), "review"))
    frozen = AccountView("alice", "USD", "frozen")

    _, events = decide(state, movement(5_000, payer=frozen))

    assert refusal(events) is RefusalReason.ACCOUNT_FROZEN


def test_the_block_is_checked_before_the_limits() -> None:
    state = fold(given(), block(given(), "review"))

    _, events = decide(state, movement(5_000))

    assert refusal(events) is RefusalReason.ACCOUNT_BLOCKED


def test_the_per_movement_limit_is_checked_before_the_daily_outflow() -> None:
    state = approved(given(), 1_000, 1_000)

    _, events = decide(state, movement(1_001, transfer_id="t-9"))

    assert refusal(events) is RefusalReason.LIMIT_EXCEEDED


# --- commit and release ------------------------------------------------------------------


def test_releasing_an_exposure_frees_the_limit() -> None:
    state = approved(given(), 1_000, 1_000)
    _, refused = decide(state, movement(1, transfer_id="t-9"))

    state = fold(state, release(state, "t-0", "leg-1", NOW))
    _, events = decide(state, movement(1, transfer_id="t-9"))

    assert refusal(refused) is RefusalReason.DAILY_OUTFLOW_EXCEEDED
    assert isinstance(events[0], ExposureReserved)
    assert state.outflow_minor(NOW) == 0


def test_a_commit_counts_toward_the_daily_outflow_and_a_release_does_not() -> None:
    state = approved(given(), 300, 400)

    state = fold(state, commit(state, "t-0", "leg-1", NOW))
    state = fold(state, release(state, "t-1", "leg-1", NOW))

    assert state.outflow_minor(NOW) == 300
    assert state.open_exposure_minor == 0


def test_an_exposure_ends_once() -> None:
    state = approved(given(), 300)
    committed = fold(state, commit(state, "t-0", "leg-1", NOW))

    assert isinstance(commit(state, "t-0", "leg-1", NOW)[0], ExposureCommitted)
    assert isinstance(release(state, "t-0", "leg-1", NOW)[0], ExposureReleased)
    assert commit(committed, "t-0", "leg-1", NOW) == []
    assert commit(given(), "t-0", "leg-1", NOW) == []
    # A release that finds nothing open only cancels: no count changes.
    (cancelled,) = release(committed, "t-0", "leg-1", NOW)
    assert isinstance(cancelled, ExposureCancelled)
    after = fold(committed, [cancelled])
    assert (after.open_exposures, after.outflow_by_minute) == (
        committed.open_exposures, committed.outflow_by_minute,
    )


def test_a_release_before_its_assessment_cancels_it_and_the_late_assessment_is_refused() -> None:
    state = given()

    (cancelled,) = release(state, "t-0", "leg-1", NOW)
    late = assess(fold(state, [cancelled]), movement(100, transfer_id="t-0"), DEFAULTS, NOW,
                  is_cancelled=True)  # fmt: skip

    assert isinstance(cancelled, ExposureCancelled)
    assert refusal(late) is RefusalReason.CANCELLED
    assert release(state, "t-0", "leg-1", NOW, is_cancelled=True) == []


def test_the_daily_outflow_rolls_after_24_hours() -> None:
    state = approved(given(), 1_000, 1_000)
    state = fold(state, commit(state, "t-0", "leg-1", NOW))
    state = fold(state, commit(state, "t-1", "leg-1", NOW))
    just_before = NOW + timedelta(hours=23, minutes=59)
    a_day_later = NOW + timedelta(hours=24, minutes=1)

    _, before = decide(state, movement(1, transfer_id="t-9"), just_before)
    _, after = decide(state, movement(1, transfer_id="t-9"), a_day_later)

    assert refusal(before) is RefusalReason.DAILY_OUTFLOW_EXCEEDED
    assert isinstance(after[0], ExposureReserved)


def test_outflow_late_in_the_minute_a_day_ago_still_counts() -> None:
    # Regression: the one-minute bucket that straddles the window's start was left out,
    # so a commit at hh:mm:59 yesterday escaped the limit from hh:mm:00 today.
    late = NOW.replace(second=59)
    state = approved(given(), 1_000, 1_000, now=late)
    state = fold(state, commit(state, "t-0", "leg-1", late))
    state = fold(state, commit(state, "t-1", "leg-1", late))
    in_the_window = late + timedelta(days=1, seconds=-58)  # hh:mm:01, one day later

    _, events = decide(state, movement(1, transfer_id="t-9"), in_the_window)

    assert refusal(events) is RefusalReason.DAILY_OUTFLOW_EXCEEDED


def test_old_buckets_are_pruned_so_the_state_stays_bounded() -> None:
    state = given()
    for hour in range(48):
        moment = NOW + timedelta(hours=hour)
        state, _ = decide(state, movement(10, transfer_id=f"t-{hour}"), moment)
        state = fold(state, commit(state, f"t-{hour}", "leg-1", moment))

    assert len(state.outflow_by_minute) <= 25
    assert len(state.approvals_by_second) == 1


def test_the_state_survives_its_row() -> None:
    state = fold(given(), set_limits(given(), Limits(max_transfer_minor=7)))
    state = fold(state, block(state, "review"))
    state = approved(fold(state, unblock(state, "ok")), 5, 6)
    state = fold(state, commit(state, "t-0", "leg-1", NOW))

    row = {"state": orjson.dumps(state_to_json(state))}

    assert state_from_row(row) == state


def test_an_outflow_bucket_beyond_64_bits_survives_its_row() -> None:
    # An account without a daily limit may send more than 2**64 - 1 minor units in one
    # minute (20 movements of 10**18, the largest amount); orjson writes at most 64 bits.
    state = given()
    for index in range(20):
        state, _ = decide(state, movement(10**18, transfer_id=f"t-{index}"), defaults=Limits())
        state = fold(state, commit(state, f"t-{index}", "leg-1", NOW))

    row = {"state": orjson.dumps(state_to_json(state))}

    assert state.outflow_minor(NOW) == 20 * 10**18
    assert state_from_row(row) == state
