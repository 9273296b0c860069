"""The account service's public language: its events and its saga commands.

Other services import these models (the risk service reads the lifecycle events, the saga
sends the commands); nothing else of the account service is theirs to know. Amounts are
integers of minor units.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from ledger.codec import DomainEvent
from ledger.commands import Command

AmountMinor = Annotated[int, Field(gt=0, le=10**18)]
Identifier = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")]
AssetCode = Annotated[str, Field(pattern=r"^[A-Z][A-Z0-9]{1,11}$")]
"""A currency or instrument code, as `ledger.money` accepts them."""
HoldId = Annotated[str, Field(min_length=1, max_length=210, pattern=r"^[A-Za-z0-9_.:-]+$")]
"""`{transfer_id}:{leg_id}:{side}` (see `hold_id`)."""
Reference = Annotated[str, Field(min_length=1, max_length=200)]
Reason = Annotated[str, Field(min_length=1, max_length=500)]


class EntryKind(StrEnum):
    """Why money moved on an account."""

    DEPOSIT = "deposit"
    WITHDRAWAL = "withdrawal"
    TRANSFER = "transfer"
    TRADE = "trade"


MovementKind = Literal[EntryKind.TRANSFER, EntryKind.TRADE]


class HoldSide(StrEnum):
    """A hold is a pending debit on the payer or a pending credit on the payee."""

    DEBIT = "debit"
    CREDIT = "credit"


class AccountEvent(DomainEvent):
    """Base of the account's events: frozen, strict about their fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    event_type: ClassVar[str]


class AccountOpened(AccountEvent):
    event_type: ClassVar[str] = "AccountOpened"
    account_id: Identifier
    owner: Identifier
    currency: AssetCode
    overdraft_limit_minor: int = Field(ge=0, le=10**18)


class Deposited(AccountEvent):
    event_type: ClassVar[str] = "Deposited"
    entry_id: Identifier
    amount_minor: AmountMinor
    reference: Reference | None = None


class Withdrawn(AccountEvent):
    event_type: ClassVar[str] = "Withdrawn"
    entry_id: Identifier
    amount_minor: AmountMinor
    reference: Reference | None = None


class HoldPlaced(AccountEvent):
    """Money reserved on this account for one saga leg: a pending debit or credit."""

    event_type: ClassVar[str] = "HoldPlaced"
    hold_id: HoldId
    side: HoldSide
    amount_minor: AmountMinor
    transfer_id: Identifier
    kind: MovementKind


class HoldPosted(AccountEvent):
    """The hold became a posted movement: exactly its amount, out or in."""

    event_type: ClassVar[str] = "HoldPosted"
    hold_id: HoldId
    side: HoldSide
    amount_minor: AmountMinor
    transfer_id: Identifier
    kind: MovementKind


class HoldVoided(AccountEvent):
    """The hold was released; no money moved."""

    event_type: ClassVar[str] = "HoldVoided"
    hold_id: HoldId
    side: HoldSide
    amount_minor: AmountMinor
    transfer_id: Identifier


class HoldCancelled(AccountEvent):
    """This hold id will never be placed: its void came first (a late reserve is refused)."""

    event_type: ClassVar[str] = "HoldCancelled"
    hold_id: HoldId
    side: HoldSide
    transfer_id: Identifier


class AccountFrozen(AccountEvent):
    event_type: ClassVar[str] = "AccountFrozen"
    reason: Reason | None = None


class AccountUnfrozen(AccountEvent):
    event_type: ClassVar[str] = "AccountUnfrozen"


class AccountClosed(AccountEvent):
    event_type: ClassVar[str] = "AccountClosed"


EVENT_TYPES: dict[str, type[AccountEvent]] = {
    model.event_type: model
    for model in (
        AccountOpened, Deposited, Withdrawn, HoldPlaced, HoldPosted, HoldVoided,
        HoldCancelled, AccountFrozen, AccountUnfrozen, AccountClosed,
    )
}


class Leg(BaseModel):
    """One movement of a saga: `amount_minor` from `from_account` to `to_account`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    leg_id: Identifier
    from_account: Identifier
    to_account: Identifier
    amount_minor: AmountMinor
    currency: AssetCode
    kind: MovementKind = EntryKind.TRANSFER


class ReserveLegs(Command):
    """Place, for every leg, a debit hold on the payer and a pending credit on the payee."""

    transfer_id: Identifier
    legs: tuple[Leg, ...] = Field(min_length=1, max_length=8)


class PostLegs(Command):
    """Post the holds of every leg of `transfer_id`."""

    transfer_id: Identifier
    legs: tuple[Leg, ...] = Field(min_length=1, max_length=8)


class VoidLegs(Command):
    """Release the holds of every leg of `transfer_id`; cancel those never placed."""

    transfer_id: Identifier
    legs: tuple[Leg, ...] = Field(min_length=1, max_length=8)


class LegsDone(BaseModel):
    """The reply to reserve, post and void: what the accounts hold now for the transfer."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    transfer_id: Identifier
    hold_ids: tuple[HoldId, ...] = Field(max_length=16)


def hold_id(transfer_id: str, leg_id: str, side: HoldSide) -> str:
    """The id of a leg's hold on one side: deterministic, so retries find the same hold."""
    return f"{transfer_id}:{leg_id}:{side.value}"

