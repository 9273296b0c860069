"""Random commands against one account: the money rules hold after every step.

The machine plays the adapter's part too: it remembers how every hold ended (the holds read
model) and passes that to the decisions, as the saga commands do.
"""

from __future__ import annotations

from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from account_service.contracts import AccountEvent, EntryKind, HoldSide
from account_service.domain import (
    AccountState,
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
from account_service.errors import AccountError, HoldEnded, HoldNotOpen

amounts = st.integers(min_value=1, max_value=1_000)
hold_ids = st.sampled_from([f"t{i}:l1:{side}" for i in range(8) for side in ("debit", "credit")])


class AccountMachine(RuleBasedStateMachine):
    """Decide random commands, fold what they return, and check the rules after each."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[AccountEvent] = []
        self.state: AccountState | None = None
        self.ended: dict[str, HoldStatus] = {}

    @property
    def account(self) -> AccountState:
        assert self.state is not None
        return self.state

    def apply(self, decide: Any, *args: Any) -> None:
        try:
            events = decide(self.account, *args)
        except AccountError:
            return  # a refusal changes nothing, which the invariants check as well
        self.events.extend(events)
        self.state = fold(events, self.state)

    @precondition(lambda self: self.state is None)
    @rule(overdraft=st.sampled_from([0, 0, 500]))
    def open(self, overdraft: int) -> None:
        self.events = open_account(None, "acc-1", "alice", "USD", overdraft)
        self.state = fold(self.events)

    @precondition(lambda self: self.state is not None)
    @rule(amount=amounts)
    def deposit(self, amount: int) -> None:
        self.apply(deposit, amount, "d", None)

    @precondition(lambda self: self.state is not None)
    @rule(amount=amounts)
    def withdraw(self, amount: int) -> None:
        self.apply(withdraw, amount, "w", None)

    @precondition(lambda self: self.state is not None)
    @rule(hold_id=hold_ids, amount=amounts, currency=st.sampled_from(["USD", "USD", "EUR"]))
    def place(self, hold_id: str, amount: int, currency: str) -> None:
        side = HoldSide.DEBIT if hold_id.endswith("debit") else HoldSide.CREDIT
        hold = Hold(hold_id, side, amount, hold_id.split(":")[0], EntryKind.TRANSFER)
        try:
            events = place_hold(self.account, hold, currency, ended=self.ended)
        except HoldEnded:
            assert hold_id in self.ended, "only a hold that ended is refused as ended"
            return
        except AccountError:
            return
        assert hold_id not in self.ended, "a hold that ended is never placed again"
        self.events.extend(events)
        self.state = fold(events, self.state)

    @precondition(lambda self: self.state is not None)
    @rule(hold_id=hold_ids, is_post=st.booleans())
    def end(self, hold_id: str, is_post: bool) -> None:
        before = self.account
        was_open = hold_id in before.open_holds
        side = HoldSide.DEBIT if hold_id.endswith("debit") else HoldSide.CREDIT
        try:
            if is_post:
                events = post_hold(before, hold_id, ended=self.ended)
            else:
                events = void_hold(before, hold_id, side, hold_id.split(":")[0], ended=self.ended)
        except HoldNotOpen:
            assert not was_open
            return
        self.events.extend(events)
        self.state = fold(events, before)
        if not events:
            assert not was_open, "an open hold is posted or voided, never skipped"
            return
        [event] = events
        assert hold_id not in self.ended, "a hold ends once"
        self.ended[hold_id] = _STATUS_AFTER[event.event_type]
        if event.event_type == "HoldCancelled":
            assert not was_open, "only a hold never placed is cancelled"
            assert self.account.posted_minor == before.posted_minor
            return
        assert was_open, "only an open hold is posted or voided"
        hold = before.open_holds[hold_id]
        moved = self.account.posted_minor - before.posted_minor
        expected = 0 if not is_post else (
            -hold.amount_minor if hold.side is HoldSide.DEBIT else hold.amount_minor)
        assert moved == expected, "posting moves exactly the hold's amount; voiding nothing"

    @precondition(lambda self: self.state is not None)
    @rule()
    def freeze(self) -> None:
        self.apply(freeze, "review")

    @precondition(lambda self: self.state is not None)
    @rule()
    def unfreeze(self) -> None:
        self.apply(unfreeze)

    @precondition(lambda self: self.state is not None)
    @rule()
    def close(self) -> None:
        before = self.account
        self.apply(close)
        if self.account.status is Status.CLOSED and before.status is not Status.CLOSED:
            assert before.posted_minor == 0
            assert not before.open_holds

    @invariant()
    def no_hold_is_open_and_ended(self) -> None:
        if self.state is not None:
            assert not set(self.state.open_holds) & set(self.ended)

    @invariant()
    def available_never_below_the_overdraft(self) -> None:
        if self.state is not None:
            assert self.state.available_minor >= -self.state.overdraft_limit_minor

    @invariant()
    def pending_sums_equal_the_open_holds(self) -> None:
        if self.state is None:
            return
        holds = self.state.open_holds.values()
        debits = sum(h.amount_minor for h in holds if h.side is HoldSide.DEBIT)
        credits = sum(h.amount_minor for h in holds if h.side is HoldSide.CREDIT)
        assert (self.state.pending_debits_minor, self.state.pending_credits_minor) == (
            debits, credits)

    @invariant()
    def state_is_the_fold_of_all_events(self) -> None:
        replayed: AccountState | None = None
        for event in self.events:
            replayed = evolve(replayed, event)
        assert replayed == self.state
        if self.state is not None:
            assert self.state.version == len(self.events)

    @invariant()
    def balance_is_deposits_minus_withdrawals_plus_posted_holds(self) -> None:
        if self.state is None:
            return
        total = 0
        for event in self.events:
            data = event.model_dump()
            if event.event_type == "Deposited":
                total += data["amount_minor"]
            elif event.event_type == "Withdrawn":
                total -= data["amount_minor"]
            elif event.event_type == "HoldPosted":
                sign = -1 if data["side"] is HoldSide.DEBIT else 1
                total += sign * data["amount_minor"]
        assert self.state.posted_minor == total

    @invariant()
    def closed_accounts_hold_nothing(self) -> None:
        if self.state is not None and self.state.status is Status.CLOSED:
            assert self.state.posted_minor == 0
            assert not self.state.open_holds


_STATUS_AFTER = {
    "HoldPosted": HoldStatus.POSTED,
    "HoldVoided": HoldStatus.VOIDED,
    "HoldCancelled": HoldStatus.CANCELLED,
}


AccountMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=50, deadline=None
)
TestAccount = AccountMachine.TestCase
