"""The account's rules, without I/O: each decision and the fold of its events."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from account_service.contracts import (
    AccountClosed,
    AccountEvent,
    AccountFrozen,
    AccountOpened,
    AccountUnfrozen,
    Deposited,
    EntryKind,
    HoldCancelled,
    HoldPlaced,
    HoldPosted,
    HoldSide,
    HoldVoided,
    Withdrawn,
)
from account_service.domain import (
    MAX_BALANCE_MINOR,
    AccountState,
    EndedHolds,
    Hold,
    HoldStatus,
    Status,
    close,
    deposit,
    evolve,
    fold,
    freeze,
    open_account,
    place_hold,
    post_hold,
    unfreeze,
    void_hold,
    withdraw,
)
from account_service.errors import (
    AccountAlreadyExists,
    AccountClosedError,
    AccountFrozenError,
    BalanceLimitExceeded,
    CannotClose,
    CurrencyMismatch,
    HoldAlreadyPosted,
    HoldAlreadyVoided,
    HoldConflict,
    HoldEnded,
    HoldNotFound,
    InsufficientFunds,
    InvalidAmount,
)

NOTHING_ENDED: EndedHolds = {}


def given(*events: AccountEvent, overdraft_minor: int = 0) -> AccountState:
    opened = AccountOpened(account_id="acc-1", owner="alice", currency="USD",
                           overdraft_limit_minor=overdraft_minor)
    state = fold([opened, *events])
    assert state is not None
    return state


def then(state: AccountState, events: list[AccountEvent]) -> AccountState:
    after = fold(events, state)
    assert after is not None
    return after


def debit(amount_minor: int, hold_id: str = "t1:l1:debit") -> Hold:
    return Hold(hold_id, HoldSide.DEBIT, amount_minor, "t1", EntryKind.TRANSFER)


def credit(amount_minor: int, hold_id: str = "t1:l1:credit") -> Hold:
    return Hold(hold_id, HoldSide.CREDIT, amount_minor, "t1", EntryKind.TRANSFER)


def placed(hold: Hold) -> HoldPlaced:
    return HoldPlaced(hold_id=hold.hold_id, side=hold.side, amount_minor=hold.amount_minor,
                      transfer_id=hold.transfer_id, kind=hold.kind)


def funded(amount_minor: int = 1_000) -> Deposited:
    return Deposited(entry_id="d1", amount_minor=amount_minor)


def void(state: AccountState, hold_id: str, ended: EndedHolds = NOTHING_ENDED
         ) -> list[AccountEvent]:
    """Void the hold `<transfer>:<leg>:<side>` as the void command would."""
    transfer_id, _, side = hold_id.split(":")
    return void_hold(state, hold_id, HoldSide(side), transfer_id, ended=ended)


def cancelled(hold_id: str = "t1:l1:debit") -> HoldCancelled:
    transfer_id, _, side = hold_id.split(":")
    return HoldCancelled(hold_id=hold_id, side=HoldSide(side), transfer_id=transfer_id)


# --- opening ---------------------------------------------------------------------------


def test_open_account_starts_empty_and_open() -> None:
    state = fold(open_account(None, "acc-1", "alice", "USD", 500))

    assert state is not None
    assert (state.status, state.posted_minor, state.available_minor) == (Status.OPEN, 0, 0)
    assert state.overdraft_limit_minor == 500
    assert state.version == 1


def test_open_account_refuses_an_existing_account() -> None:
    with pytest.raises(AccountAlreadyExists):
        open_account(given(), "acc-1", "alice", "USD", 0)


def test_open_account_refuses_a_negative_overdraft() -> None:
    with pytest.raises(InvalidAmount):
        open_account(None, "acc-1", "alice", "USD", -1)


# --- deposits and withdrawals ----------------------------------------------------------


def test_deposit_raises_posted_and_available() -> None:
    state = then(given(), deposit(given(), 250, "d1", None))

    assert (state.posted_minor, state.available_minor, state.version) == (250, 250, 2)


@pytest.mark.parametrize("amount_minor", [0, -5])
def test_deposit_and_withdraw_refuse_a_non_positive_amount(amount_minor: int) -> None:
    with pytest.raises(InvalidAmount):
        deposit(given(), amount_minor, "d1", None)
    with pytest.raises(InvalidAmount):
        withdraw(given(funded()), amount_minor, "w1", None)


def test_deposit_refuses_a_balance_beyond_the_largest() -> None:
    state = given(funded(10**18), *[Deposited(entry_id=f"d{i}", amount_minor=10**18)
                                   for i in range(8)])

    with pytest.raises(BalanceLimitExceeded):
        deposit(state, 10**18, "d9", None)


def test_withdraw_lowers_posted() -> None:
    state = given(funded(1_000))

    assert then(state, withdraw(state, 400, "w1", None)).posted_minor == 600


def test_withdraw_refuses_more_than_available() -> None:
    with pytest.raises(InsufficientFunds) as refused:
        withdraw(given(funded(100)), 101, "w1", None)

    assert (refused.value.needed_minor, refused.value.available_minor) == (101, 100)
    assert refused.value.code == "insufficient_funds"


def test_withdraw_may_use_the_overdraft_and_no_more() -> None:
    state = given(funded(100), overdraft_minor=50)

    assert then(state, withdraw(state, 150, "w1", None)).available_minor == -50
    with pytest.raises(InsufficientFunds):
        withdraw(state, 151, "w1", None)


def test_withdraw_counts_pending_debits() -> None:
    state = given(funded(100), placed(debit(80)))

    assert state.available_minor == 20
    with pytest.raises(InsufficientFunds):
        withdraw(state, 21, "w1", None)


# --- holds -----------------------------------------------------------------------------


def test_debit_hold_reserves_available_but_not_posted() -> None:
    state = given(funded(100))

    after = then(state, place_hold(state, debit(30), "USD", ended=NOTHING_ENDED))

    assert (after.posted_minor, after.pending_debits_minor, after.available_minor) == (100, 30, 70)
    assert set(after.open_holds) == {"t1:l1:debit"}


def test_debit_hold_refuses_more_than_available() -> None:
    with pytest.raises(InsufficientFunds):
        place_hold(given(funded(100), placed(debit(80, "other"))), debit(21), "USD",
                   ended=NOTHING_ENDED)


def test_debit_hold_may_use_the_overdraft() -> None:
    state = given(overdraft_minor=40)

    after = then(state, place_hold(state, debit(40), "USD", ended=NOTHING_ENDED))

    assert after.available_minor == -40
    with pytest.raises(InsufficientFunds):
        place_hold(state, debit(41), "USD", ended=NOTHING_ENDED)


def test_credit_hold_is_pending_and_does_not_raise_available() -> None:
    state = given()

    after = then(state, place_hold(state, credit(70), "USD", ended=NOTHING_ENDED))

    assert (after.posted_minor, after.pending_credits_minor, after.available_minor) == (0, 70, 0)


def test_credit_hold_refuses_a_balance_beyond_the_largest() -> None:
    state = given(*[Deposited(entry_id=f"d{i}", amount_minor=10**18) for i in range(9)])
    room = MAX_BALANCE_MINOR - state.posted_minor

    with pytest.raises(BalanceLimitExceeded):
        place_hold(state, credit(room + 1), "USD", ended=NOTHING_ENDED)
    assert place_hold(state, credit(room), "USD", ended=NOTHING_ENDED)


def test_hold_refuses_another_currency() -> None:
    with pytest.raises(CurrencyMismatch):
        place_hold(given(funded()), debit(10), "EUR", ended=NOTHING_ENDED)


def test_hold_refuses_a_non_positive_amount() -> None:
    with pytest.raises(InvalidAmount):
        place_hold(given(funded()), credit(0), "USD", ended=NOTHING_ENDED)


def test_placing_an_open_hold_again_is_a_retry_that_changes_nothing() -> None:
    state = given(funded(100), placed(debit(30)), AccountFrozen())

    assert place_hold(state, debit(30), "USD", ended=NOTHING_ENDED) == []


def test_placing_an_open_hold_again_on_other_terms_is_refused() -> None:
    state = given(funded(100), placed(debit(30)))

    with pytest.raises(HoldConflict):
        place_hold(state, debit(31), "USD", ended=NOTHING_ENDED)


def test_posting_a_debit_hold_moves_exactly_its_amount_out() -> None:
    state = given(funded(100), placed(debit(30)))

    events = post_hold(state, "t1:l1:debit", ended=NOTHING_ENDED)
    after = then(state, events)

    assert events == [HoldPosted(hold_id="t1:l1:debit", side=HoldSide.DEBIT, amount_minor=30,
                                 transfer_id="t1", kind=EntryKind.TRANSFER)]
    assert (after.posted_minor, after.pending_debits_minor, after.available_minor) == (70, 0, 70)
    assert not after.open_holds


def test_posting_a_credit_hold_moves_exactly_its_amount_in() -> None:
    state = given(placed(credit(30)))

    after = then(state, post_hold(state, "t1:l1:credit", ended=NOTHING_ENDED))

    assert (after.posted_minor, after.pending_credits_minor, after.available_minor) == (30, 0, 30)


def test_voiding_a_hold_releases_it_and_moves_nothing() -> None:
    state = given(funded(100), placed(debit(30)), placed(credit(5)))

    after = then(state, void(state, "t1:l1:debit"))
    after = then(after, void(after, "t1:l1:credit"))

    assert (after.posted_minor, after.available_minor) == (100, 100)
    assert (after.pending_debits_minor, after.pending_credits_minor) == (0, 0)
    assert not after.open_holds


def test_posting_a_posted_hold_again_is_a_retry_that_changes_nothing() -> None:
    state = given(funded(70))

    assert post_hold(state, "t1:l1:debit", ended={"t1:l1:debit": HoldStatus.POSTED}) == []


@pytest.mark.parametrize("status", [HoldStatus.VOIDED, HoldStatus.CANCELLED])
def test_posting_a_voided_or_cancelled_hold_is_refused(status: HoldStatus) -> None:
    with pytest.raises(HoldAlreadyVoided) as refused:
        post_hold(given(funded()), "t1:l1:debit", ended={"t1:l1:debit": status})

    assert refused.value.code == "hold_voided"


def test_posting_a_hold_never_placed_is_refused() -> None:
    with pytest.raises(HoldNotFound) as refused:
        post_hold(given(), "nope", ended=NOTHING_ENDED)

    assert (refused.value.hold_id, refused.value.code) == ("nope", "hold_not_found")


@pytest.mark.parametrize("status", [HoldStatus.VOIDED, HoldStatus.CANCELLED])
def test_voiding_a_voided_or_cancelled_hold_again_changes_nothing(status: HoldStatus) -> None:
    assert void(given(), "t1:l1:debit", ended={"t1:l1:debit": status}) == []


def test_voiding_a_posted_hold_is_refused() -> None:
    with pytest.raises(HoldAlreadyPosted) as refused:
        void(given(funded()), "t1:l1:debit", ended={"t1:l1:debit": HoldStatus.POSTED})

    assert refused.value.code == "hold_posted"


@pytest.mark.parametrize("status", [Status.OPEN, Status.FROZEN])
def test_voiding_a_hold_never_placed_cancels_it_and_moves_nothing(status: Status) -> None:
    state = given(funded(100), AccountFrozen()) if status is Status.FROZEN else given(funded(100))

    events = void(state, "t1:l1:debit")
    after = then(state, events)

    assert events == [cancelled("t1:l1:debit")]
    assert (after.posted_minor, after.available_minor, after.pending_debits_minor) == (100, 100, 0)
    assert not after.open_holds
    assert after.version == state.version + 1


def test_voiding_a_hold_never_placed_on_a_closed_account_changes_nothing() -> None:
    assert void(given(AccountClosed()), "t1:l1:credit") == []


@pytest.mark.parametrize("status", [HoldStatus.POSTED, HoldStatus.VOIDED, HoldStatus.CANCELLED])
def test_placing_a_hold_that_ended_is_refused(status: HoldStatus) -> None:
    state = given(funded(100))

    with pytest.raises(HoldEnded) as refused:
        place_hold(state, debit(30), "USD", ended={"t1:l1:debit": status})

    assert (refused.value.code, refused.value.status) == ("hold_ended", status)


def test_a_late_reserve_after_its_void_is_refused() -> None:
    state = given(funded(100))
    after = then(state, void(state, "t1:l1:debit"))

    with pytest.raises(HoldEnded):
        place_hold(after, debit(30), "USD", ended={"t1:l1:debit": HoldStatus.CANCELLED})


def test_the_fold_refuses_a_placed_hold_cancelled() -> None:
    state = given(funded(100), placed(debit(30)))

    with pytest.raises(AssertionError, match="voided, not cancelled"):
        evolve(state, cancelled("t1:l1:debit"))


def test_an_open_hold_listed_as_ended_is_a_bug() -> None:
    state = given(funded(100), placed(debit(30)))
    ended = {"t1:l1:debit": HoldStatus.VOIDED}

    with pytest.raises(AssertionError, match="open and ended"):
        post_hold(state, "t1:l1:debit", ended=ended)
    with pytest.raises(AssertionError, match="open and ended"):
        place_hold(state, debit(30), "USD", ended=ended)


def test_the_fold_refuses_a_hold_ended_twice() -> None:
    hold = debit(30)
    posted = HoldPosted(hold_id=hold.hold_id, side=hold.side, amount_minor=30,
                        transfer_id="t1", kind=hold.kind)
    state = given(funded(100), placed(hold), posted)

    with pytest.raises(AssertionError, match="ends once"):
        evolve(state, posted)


def test_the_fold_refuses_a_hold_ended_with_another_amount() -> None:
    state = given(funded(100), placed(debit(30)))

    with pytest.raises(AssertionError, match="exactly its amount"):
        evolve(state, HoldVoided(hold_id="t1:l1:debit", side=HoldSide.DEBIT, amount_minor=29,
                                 transfer_id="t1"))


# --- freezing --------------------------------------------------------------------------


def test_frozen_account_refuses_new_debits_and_credits() -> None:
    state = given(funded(100), AccountFrozen(reason="fraud review"))

    attempts: list[Callable[[], list[AccountEvent]]] = [
        lambda: deposit(state, 1, "d2", None),
        lambda: withdraw(state, 1, "w1", None),
        lambda: place_hold(state, debit(1), "USD", ended=NOTHING_ENDED),
        lambda: place_hold(state, credit(1), "USD", ended=NOTHING_ENDED),
    ]
    for attempt in attempts:
        with pytest.raises(AccountFrozenError):
            attempt()


def test_frozen_account_still_posts_and_voids_existing_holds() -> None:
    state = given(funded(100), placed(debit(30)), placed(credit(5)), AccountFrozen())

    after = then(state, post_hold(state, "t1:l1:debit", ended=NOTHING_ENDED))
    after = then(after, void(after, "t1:l1:credit"))

    assert (after.posted_minor, after.status) == (70, Status.FROZEN)


def test_freeze_and_unfreeze_are_idempotent() -> None:
    state = given()
    frozen = then(state, freeze(state, None))

    assert frozen.status is Status.FROZEN
    assert freeze(frozen, None) == []
    assert unfreeze(state) == []
    assert then(frozen, unfreeze(frozen)).status is Status.OPEN


# --- closing ---------------------------------------------------------------------------


def test_close_needs_a_zero_balance() -> None:
    with pytest.raises(CannotClose):
        close(given(funded(1)))


def test_close_refuses_an_overdrawn_account() -> None:
    with pytest.raises(CannotClose):
        close(given(Withdrawn(entry_id="w1", amount_minor=5), overdraft_minor=5))


def test_close_needs_no_open_holds() -> None:
    with pytest.raises(CannotClose):
        close(given(placed(credit(5))))


def test_closed_account_accepts_nothing() -> None:
    state = given(AccountClosed())

    assert state.status is Status.CLOSED
    assert close(state) == []
    with pytest.raises(AccountClosedError):
        deposit(state, 1, "d1", None)
    with pytest.raises(AccountClosedError):
        place_hold(state, credit(1), "USD", ended=NOTHING_ENDED)
    with pytest.raises(AccountClosedError):
        freeze(state, None)
    with pytest.raises(AccountClosedError):
        unfreeze(state)


def test_close_of_a_zero_balance_account() -> None:
    state = given(funded(10), Withdrawn(entry_id="w1", amount_minor=10), AccountFrozen(),
                  AccountUnfrozen())

    assert close(state) == [AccountClosed()]


def test_events_before_opening_are_a_bug() -> None:
    with pytest.raises(AssertionError):
        evolve(None, funded())
