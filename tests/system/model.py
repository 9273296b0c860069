"""The test's own model of the ledger: what each account must hold, and what a settlement
(a transfer or a trade) must come to.

Pure: no I/O. The state machine tells it what the API answered; it says what the API may
answer. A settlement's outcome is known only once it is final, so the model moves money
only when the API reports a settlement `completed` (rejected and failed ones move none),
and predicts an outcome only when nothing else in flight touches the settlement's accounts
(otherwise the funds it will find are not known in advance).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

FINAL: Final = frozenset({"completed", "rejected", "failed"})
SAGA_FINAL: Final = frozenset({"completed", "rejected", "failed"})


@dataclass
class AccountModel:
    """What the test knows of one account."""

    account_id: str
    owner: str
    currency: str
    overdraft_minor: int = 0
    balance_minor: int = 0
    is_frozen: bool = False
    max_transfer_minor: int | None = None

    @property
    def spendable_minor(self) -> int:
        """What a debit may take when no hold is open: balance plus overdraft."""
        return self.balance_minor + self.overdraft_minor


@dataclass(frozen=True, slots=True)
class LegModel:
    """One movement of a settlement."""

    from_account: str
    to_account: str
    amount_minor: int
    currency: str


@dataclass(frozen=True, slots=True)
class Expected:
    """A predicted outcome: the status, and the reasons a rejection may give."""

    status: str
    reasons: frozenset[str] = frozenset()

    def allows(self, status: str, reason: str | None, *, is_after_fault: bool = False) -> bool:
        """Whether an outcome reported by the API agrees with the prediction.

        After a fault, a saga may also give up (`failed`, `retries_exhausted`) while a
        participant recovers (messages a stopped consumer had fetched come back only after
        its ack wait): it moves no money then, which the balances check.
        """
        if is_after_fault and (status, reason) == ("failed", "retries_exhausted"):
            return True
        if status != self.status:
            return False
        return status != "rejected" or reason in self.reasons


@dataclass
class SettlementModel:
    """A transfer or trade the API accepted (202)."""

    settlement_id: str
    kind: str
    legs: tuple[LegModel, ...]
    expected: Expected | None
    status: str = "pending"
    reason: str | None = None


@dataclass
class LedgerModel:
    """Every account and settlement of one hypothesis example."""

    accounts: dict[str, AccountModel] = field(default_factory=dict)
    net_minor: Counter[str] = field(default_factory=Counter)
    """Per asset: deposits minus withdrawals, the only doors to the outside."""
    settlements: dict[str, SettlementModel] = field(default_factory=dict)

    def ids_of(self, currency: str | None = None) -> list[str]:
        """Account ids, in opening order, of `currency` if given."""
        return [a.account_id for a in self.accounts.values()
                if currency is None or a.currency == currency]  # fmt: skip

    def pending(self) -> list[SettlementModel]:
        """Settlements not final yet."""
        return [s for s in self.settlements.values() if s.status == "pending"]

    def is_busy(self, account_id: str) -> bool:
        """Whether a settlement in flight touches the account (its funds are uncertain)."""
        return any(account_id in (leg.from_account, leg.to_account)
                   for s in self.pending() for leg in s.legs)  # fmt: skip

    def deposited(self, account_id: str, amount_minor: int) -> None:
        account = self.accounts[account_id]
        account.balance_minor += amount_minor
        self.net_minor[account.currency] += amount_minor

    def withdrawn(self, account_id: str, amount_minor: int) -> None:
        account = self.accounts[account_id]
        account.balance_minor -= amount_minor
        self.net_minor[account.currency] -= amount_minor

    def predict(self, legs: tuple[LegModel, ...],
                alongside: Sequence[tuple[LegModel, ...]] = ()) -> Expected | None:  # fmt: skip
        """The outcome of a settlement of `legs` submitted now, together with the legs
        `alongside`, and waited for at once; None when another settlement in flight or
        alongside touches its accounts.

        Risk (unknown, frozen, currency, limit) decides before the account service (frozen,
        currency, funds), so a rejection may name any of the reasons that apply.
        """
        touched = {a for leg in legs for a in (leg.from_account, leg.to_account)}
        if any(self.is_busy(a) for a in touched if a in self.accounts):
            return None
        if touched & {a for other in alongside for leg in other
                      for a in (leg.from_account, leg.to_account)}:  # fmt: skip
            return None
        reasons: set[str] = set()
        spent: Counter[str] = Counter()
        for leg in legs:
            for account_id in (leg.from_account, leg.to_account):
                account = self.accounts.get(account_id)
                if account is None:
                    reasons.add("unknown_account")
                    continue
                if account.is_frozen:
                    reasons.add("account_frozen")
                if account.currency != leg.currency:
                    reasons.add("currency_mismatch")
            payer = self.accounts.get(leg.from_account)
            if payer is None:
                continue
            limit = payer.max_transfer_minor
            if limit is not None and leg.amount_minor > limit:
                reasons.add("limit_exceeded")
            spent[payer.account_id] += leg.amount_minor
            if spent[payer.account_id] > payer.spendable_minor:
                reasons.add("insufficient_funds")
        if reasons:
            return Expected("rejected", frozenset(reasons))
        return Expected("completed")

    def settled(self, settlement_id: str, status: str, reason: str | None) -> None:
        """Record a final outcome; a completed settlement moves its legs' money."""
        assert status in FINAL, f"{status} is not final"
        settlement = self.settlements[settlement_id]
        assert settlement.status == "pending", f"{settlement_id} was final already"
        settlement.status, settlement.reason = status, reason
        if status != "completed":
            return
        for leg in settlement.legs:
            self.accounts[leg.from_account].balance_minor -= leg.amount_minor
            self.accounts[leg.to_account].balance_minor += leg.amount_minor

    def completed_legs_of(self, account_id: str) -> int:
        """How many legs of completed settlements moved money in or out of the account."""
        return sum(1 for s in self.settlements.values() if s.status == "completed"
                   for leg in s.legs if account_id in (leg.from_account, leg.to_account))
