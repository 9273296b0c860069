"""Pure comparisons of an account's fold with its read models: the balances row and the
entries' totals. Each returns what differs, in words, or None."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from account_service.domain import AccountState

_COMPARED_FIELDS: Final = (
    "owner", "currency", "overdraft_limit_minor", "status", "posted_minor",
    "pending_debits_minor", "pending_credits_minor", "version",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class EntriesTotal:
    """An account's entries summed up by the database."""

    entries: int
    amount_minor: int
    last_balance_minor: int
    positions: int
    """The sum of the entries' global positions (which events they were made from)."""
    first_unfollowed_position: int | None
    """The first entry whose balance is not the one before plus its amount."""


def balances_difference(row: AccountState, folded: AccountState) -> str | None:
    """What the balances row says that the fold of the account's events does not."""
    differences = [
        f"{name} is {getattr(row, name)} in the row but {getattr(folded, name)} by the events"
        for name in _COMPARED_FIELDS
        if getattr(row, name) != getattr(folded, name)
    ]
    row_holds, folded_holds = dict(row.open_holds), dict(folded.open_holds)
    if row_holds != folded_holds:
        only_row = sorted(row_holds.keys() - folded_holds.keys())
        only_events = sorted(folded_holds.keys() - row_holds.keys())
        differences.append(
            f"open holds differ (only in the row: {only_row or 'none'}; only by the events:"
            f" {only_events or 'none'}; same ids, other terms otherwise)"
        )
    return "; ".join(differences) or None


def entries_difference(
    total: EntriesTotal, posted_minor: int, movements: int, movement_positions: int
) -> str | None:
    """What is wrong with an account's entries, given its fold: posted balance, how many
    movements (deposits, withdrawals, posted holds) and the sum of their positions."""
    differences = []
    if total.entries != movements:
        differences.append(f"{total.entries} entries for {movements} movements")
    elif total.positions != movement_positions:
        differences.append("the entries were not made from the account's movements")
    if total.amount_minor != posted_minor:
        differences.append(
            f"entries sum to {total.amount_minor} minor units, the balance is {posted_minor}"
        )
    if total.last_balance_minor != posted_minor:
        differences.append(
            f"the last entry's balance is {total.last_balance_minor}, the balance is"
            f" {posted_minor}"
        )
    if total.first_unfollowed_position is not None:
        differences.append(
            f"the entry at global position {total.first_unfollowed_position} does not follow"
            " from the one before"
        )
    return "; ".join(differences) or None
