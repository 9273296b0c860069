"""The account: its state as a fold of its events, and the rules that decide new events.

Pure: no I/O. Each decision takes the state and a request and returns the events that
follow, or raises a named error a person can act on (`account_service.errors`; DESIGN 3,
STYLE 1, 15).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType
from typing import Final, TypeAlias

from account_service.contracts import (
    AccountClosed,
    AccountEvent,
    AccountFrozen,
    AccountOpened,
    AccountUnfrozen,
    Deposited,
    HoldCancelled,
    HoldPlaced,
    HoldPosted,
    HoldSide,
    HoldVoided,
    MovementKind,
    Withdrawn,
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
    TooManyHolds,
)

MAX_OPEN_HOLDS: Final = 10_000
"""An account with more unfinished holds than this refuses new ones (a bound, STYLE 6)."""
MAX_BALANCE_MINOR: Final = 2**63 - 1
"""The largest balance an account may reach, pending credits included (a Postgres bigint)."""


class Status(StrEnum):
    OPEN = "open"
    FROZEN = "frozen"
    CLOSED = "closed"


class HoldStatus(StrEnum):
    """Where a hold id stands: open, or how it ended (cancelled: voided before it was placed)."""

    OPEN = "open"
    POSTED = "posted"
    VOIDED = "voided"
    CANCELLED = "cancelled"


EndedHolds: TypeAlias = Mapping[str, HoldStatus]
"""Hold id -> how it ended, for the hold ids a decision touches (never OPEN).

The state keeps only open holds, so that it stays bounded; the adapter looks up how the
others ended (the holds read model) and passes it in.
"""


@dataclass(frozen=True, slots=True)
class Hold:
    """An unfinished reservation for one saga leg."""

    hold_id: str
    side: HoldSide
    amount_minor: int
    transfer_id: str
    kind: MovementKind


@dataclass(frozen=True, slots=True)
class AccountState:
    """An account as its events left it. `version` is its stream version."""

    account_id: str
    owner: str
    currency: str
    overdraft_limit_minor: int
    status: Status = Status.OPEN
    posted_minor: int = 0
    pending_debits_minor: int = 0
    pending_credits_minor: int = 0
    open_holds: MappingProxyType[str, Hold] = field(
        default_factory=lambda: MappingProxyType({})
    )
    version: int = 0

    @property
    def available_minor(self) -> int:
        """What may still be debited, before the overdraft: posted - pending debits."""
        return self.posted_minor - self.pending_debits_minor


# --- decisions -------------------------------------------------------------------------


def open_account(
    state: AccountState | None, account_id: str, owner: str, currency: str, overdraft_minor: int
) -> list[AccountEvent]:
    """Open a new account holding one asset."""
    if state is not None:
        raise AccountAlreadyExists(account_id)
    if overdraft_minor < 0:
        raise InvalidAmount(f"an overdraft limit cannot be negative, got {overdraft_minor}")
    return [AccountOpened(account_id=account_id, owner=owner, currency=currency,
                          overdraft_limit_minor=overdraft_minor)]


def deposit(
    state: AccountState, amount_minor: int, entry_id: str, reference: str | None
) -> list[AccountEvent]:
    """Money in from outside the ledger."""
    _require_open(state)
    _require_positive(amount_minor)
    _require_room(state, amount_minor)
    return [Deposited(entry_id=entry_id, amount_minor=amount_minor, reference=reference)]


def withdraw(
    state: AccountState, amount_minor: int, entry_id: str, reference: str | None
) -> list[AccountEvent]:
    """Money out of the ledger; never below the overdraft limit."""
    _require_open(state)
    _require_positive(amount_minor)
    _require_funds(state, amount_minor)
    return [Withdrawn(entry_id=entry_id, amount_minor=amount_minor, reference=reference)]


def place_hold(
    state: AccountState, hold: Hold, currency: str, *, ended: EndedHolds
) -> list[AccountEvent]:
    """Reserve a debit (funds must be available) or a pending credit for a saga leg.

    Placing a hold that is open already, on the same terms, is a retry and changes nothing
    (even if the account was frozen since). A hold id in `ended` (posted, voided, or
    cancelled by a void that came first) raises HoldEnded: a hold is placed once.
    """
    existing = state.open_holds.get(hold.hold_id)
    if existing is not None:
        _assert_not_ended(ended, hold.hold_id)
        if existing != hold or currency != state.currency:
            raise HoldConflict(state.account_id, hold.hold_id)
        return []
    status = ended.get(hold.hold_id)
    if status is not None:
        raise HoldEnded(state.account_id, hold.hold_id, _ended_status(status))
    _require_open(state)
    if currency != state.currency:
        raise CurrencyMismatch(state.account_id, state.currency, currency)
    _require_positive(hold.amount_minor)
    if len(state.open_holds) >= MAX_OPEN_HOLDS:
        raise TooManyHolds(f"account {state.account_id} has {MAX_OPEN_HOLDS} unfinished holds")
    if hold.side is HoldSide.DEBIT:
        _require_funds(state, hold.amount_minor)
    else:
        _require_room(state, hold.amount_minor)
    return [HoldPlaced(hold_id=hold.hold_id, side=hold.side, amount_minor=hold.amount_minor,
                       transfer_id=hold.transfer_id, kind=hold.kind)]


def post_hold(state: AccountState, hold_id: str, *, ended: EndedHolds) -> list[AccountEvent]:
    """Turn an open hold into a posted movement of exactly its amount (even when frozen).

    Posting a posted hold is a retry and changes nothing. Raises HoldAlreadyVoided for a
    hold voided or cancelled, HoldNotFound for one never placed.
    """
    hold = state.open_holds.get(hold_id)
    if hold is not None:
        _assert_not_ended(ended, hold_id)
        return [HoldPosted(hold_id=hold.hold_id, side=hold.side, amount_minor=hold.amount_minor,
                           transfer_id=hold.transfer_id, kind=hold.kind)]
    status = ended.get(hold_id)
    if status is None:
        raise HoldNotFound(state.account_id, hold_id)
    if _ended_status(status) is HoldStatus.POSTED:
        return []
    raise HoldAlreadyVoided(state.account_id, hold_id)


def void_hold(
    state: AccountState, hold_id: str, side: HoldSide, transfer_id: str, *, ended: EndedHolds
) -> list[AccountEvent]:
    """Release an open hold (even when frozen); no money moves.

    The compensation of a reserve, which may have failed, or not have arrived yet: a hold id
    never placed is cancelled (HoldCancelled), so that a late reserve is refused, except on
    a closed account, which takes no hold anyway. Voiding a hold voided or cancelled is a
    retry and changes nothing. Raises HoldAlreadyPosted for a posted hold.
    """
    hold = state.open_holds.get(hold_id)
    if hold is not None:
        _assert_not_ended(ended, hold_id)
        return [HoldVoided(hold_id=hold.hold_id, side=hold.side, amount_minor=hold.amount_minor,
                           transfer_id=hold.transfer_id)]
    status = ended.get(hold_id)
    if status is None:
        if state.status is Status.CLOSED:
            return []
        return [HoldCancelled(hold_id=hold_id, side=side, transfer_id=transfer_id)]
    if _ended_status(status) is HoldStatus.POSTED:
        raise HoldAlreadyPosted(state.account_id, hold_id)
    return []


def freeze(state: AccountState, reason: str | None) -> list[AccountEvent]:
    """Stop new debits and credits; freezing a frozen account changes nothing."""
    if state.status is Status.CLOSED:
        raise AccountClosedError(state.account_id)
    return [] if state.status is Status.FROZEN else [AccountFrozen(reason=reason)]


def unfreeze(state: AccountState) -> list[AccountEvent]:
    """Accept debits and credits again; unfreezing an open account changes nothing."""
    if state.status is Status.CLOSED:
        raise AccountClosedError(state.account_id)
    return [AccountUnfrozen()] if state.status is Status.FROZEN else []


def close(state: AccountState) -> list[AccountEvent]:
    """Close for good: needs a zero balance and no open holds."""
    if state.status is Status.CLOSED:
        return []
    if state.posted_minor != 0:
        raise CannotClose(f"account {state.account_id} has a balance of {state.posted_minor}")
    if state.open_holds:
        raise CannotClose(f"account {state.account_id} has {len(state.open_holds)} open holds")
    return [AccountClosed()]


def _require_open(state: AccountState) -> None:
    if state.status is Status.FROZEN:
        raise AccountFrozenError(state.account_id)
    if state.status is Status.CLOSED:
        raise AccountClosedError(state.account_id)


def _require_positive(amount_minor: int) -> None:
    if amount_minor <= 0:
        raise InvalidAmount(f"an amount must be positive minor units, got {amount_minor}")


def _require_room(state: AccountState, amount_minor: int) -> None:
    if state.posted_minor + state.pending_credits_minor + amount_minor > MAX_BALANCE_MINOR:
        raise BalanceLimitExceeded(state.account_id, MAX_BALANCE_MINOR)


def _require_funds(state: AccountState, amount_minor: int) -> None:
    if state.available_minor - amount_minor < -state.overdraft_limit_minor:
        available = state.available_minor + state.overdraft_limit_minor
        raise InsufficientFunds(state.account_id, amount_minor, available)


def _ended_status(status: HoldStatus) -> HoldStatus:
    assert status is not HoldStatus.OPEN, "ended holds list only holds that ended"
    return status


def _assert_not_ended(ended: EndedHolds, hold_id: str) -> None:
    assert hold_id not in ended, f"hold {hold_id} is open and ended at once"


# --- the fold --------------------------------------------------------------------------


def evolve(state: AccountState | None, event: AccountEvent) -> AccountState:
    """The state after `event`; the only way an account's state changes."""
    if isinstance(event, AccountOpened):
        assert state is None, "an account opens once"
        return AccountState(event.account_id, event.owner, event.currency,
                            event.overdraft_limit_minor, version=1)
    assert state is not None, f"{event.event_type} before AccountOpened"
    state = replace(state, version=state.version + 1)
    match event:
        case Deposited():
            return replace(state, posted_minor=state.posted_minor + event.amount_minor)
        case Withdrawn():
            return replace(state, posted_minor=state.posted_minor - event.amount_minor)
        case HoldPlaced():
            return _with_hold_placed(state, event)
        case HoldPosted() | HoldVoided():
            return _with_hold_ended(state, event)
        case HoldCancelled():
            # Nothing was reserved, so nothing is released; the holds read model remembers it.
            assert event.hold_id not in state.open_holds, "a placed hold is voided, not cancelled"
            return state
        case AccountFrozen():
            return replace(state, status=Status.FROZEN)
        case AccountUnfrozen():
            return replace(state, status=Status.OPEN)
        case AccountClosed():
            return replace(state, status=Status.CLOSED)
    raise AssertionError(f"unknown account event {event!r}")


def fold(events: list[AccountEvent], state: AccountState | None = None) -> AccountState | None:
    """Evolve `state` through `events`."""
    for event in events:
        state = evolve(state, event)
    return state


def _with_hold_placed(state: AccountState, event: HoldPlaced) -> AccountState:
    assert event.hold_id not in state.open_holds, "a hold is placed once"
    hold = Hold(event.hold_id, event.side, event.amount_minor, event.transfer_id, event.kind)
    holds = MappingProxyType({**state.open_holds, hold.hold_id: hold})
    if hold.side is HoldSide.DEBIT:
        return replace(state, open_holds=holds,
                       pending_debits_minor=state.pending_debits_minor + hold.amount_minor)
    return replace(state, open_holds=holds,
                   pending_credits_minor=state.pending_credits_minor + hold.amount_minor)


def _with_hold_ended(state: AccountState, event: HoldPosted | HoldVoided) -> AccountState:
    hold = state.open_holds.get(event.hold_id)
    assert hold is not None, "a hold ends once, and only after it was placed"
    assert event.amount_minor == hold.amount_minor, "a hold ends with exactly its amount"
    assert event.side is hold.side, "a hold ends on the side it was placed"
    is_posted = isinstance(event, HoldPosted)
    holds = MappingProxyType({k: v for k, v in state.open_holds.items() if k != event.hold_id})
    if hold.side is HoldSide.DEBIT:
        posted = state.posted_minor - hold.amount_minor if is_posted else state.posted_minor
        return replace(state, open_holds=holds, posted_minor=posted,
                       pending_debits_minor=state.pending_debits_minor - hold.amount_minor)
    posted = state.posted_minor + hold.amount_minor if is_posted else state.posted_minor
    return replace(state, open_holds=holds, posted_minor=posted,
                   pending_credits_minor=state.pending_credits_minor - hold.amount_minor)
