"""The trade service's public language: its events and the commands the saga sends it.

A transfer is one leg; a trade (delivery versus payment) is two legs, cash one way and the
instrument the other. Both are settled by the same saga ("settle legs"), which starts from
`TransferRequested` or `TradeRequested` and ends the request with complete, reject or fail.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from ledger.codec import DomainEvent
from ledger.commands import Command

AmountMinor = Annotated[int, Field(gt=0, le=10**18)]
Identifier = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")]
Reason = Annotated[str, Field(min_length=1, max_length=100)]
AssetCode = Annotated[str, Field(pattern=r"^[A-Z][A-Z0-9]{1,11}$")]
"""A currency or instrument code, as `ledger.money` accepts them."""
Reference = Annotated[str, Field(min_length=1, max_length=200)]
DecimalText = Annotated[str, Field(min_length=1, max_length=40)]
Detail = Annotated[str, Field(max_length=1000)]


class SettlementStatus(StrEnum):
    """Where a transfer or trade stands, as the customer sees it."""

    PENDING = "pending"
    COMPLETED = "completed"
    REJECTED = "rejected"
    FAILED = "failed"


class SettlementLeg(BaseModel):
    """One movement to settle: `amount_minor` of `currency` from one account to another."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    leg_id: Identifier
    from_account: Identifier
    to_account: Identifier
    amount_minor: AmountMinor
    currency: AssetCode
    kind: Literal["transfer", "trade"] = "transfer"


class TradeEvent(DomainEvent):
    """Base of the trade service's events."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    event_type: ClassVar[str]


class TransferRequested(TradeEvent):
    """A customer asked to move money; the saga `transfer_id` starts from this."""

    event_type: ClassVar[str] = "TransferRequested"
    transfer_id: Identifier
    legs: tuple[SettlementLeg, ...] = Field(min_length=1, max_length=1)
    reference: Reference | None = None
    requested_at: datetime


class TradeRequested(TradeEvent):
    """A delivery-versus-payment trade: two legs settled both or neither."""

    event_type: ClassVar[str] = "TradeRequested"
    transfer_id: Identifier
    instrument: AssetCode
    quantity_minor: AmountMinor
    price: DecimalText
    legs: tuple[SettlementLeg, ...] = Field(min_length=2, max_length=2)
    requested_at: datetime


class SettlementCompleted(TradeEvent):
    event_type: ClassVar[str] = "SettlementCompleted"
    transfer_id: Identifier
    completed_at: datetime


class SettlementRejected(TradeEvent):
    """A business refusal (insufficient funds, a risk limit...): nothing moved."""

    event_type: ClassVar[str] = "SettlementRejected"
    transfer_id: Identifier
    reason: Reason
    detail: Detail | None = None
    rejected_at: datetime


class SettlementFailed(TradeEvent):
    """The saga gave up (retries or deadline ran out) and compensated: nothing moved."""

    event_type: ClassVar[str] = "SettlementFailed"
    transfer_id: Identifier
    reason: Reason
    detail: Detail | None = None
    failed_at: datetime


EVENT_TYPES: dict[str, type[TradeEvent]] = {
    model.event_type: model
    for model in (
        TransferRequested, TradeRequested, SettlementCompleted, SettlementRejected,
        SettlementFailed,
    )
}


class CompleteSettlement(Command):
    """trade.complete: the legs are posted; the transfer or trade is completed."""

    transfer_id: Identifier


class RejectSettlement(Command):
    """trade.reject: a participant refused; everything was compensated."""

    transfer_id: Identifier
    reason: Reason
    detail: Detail | None = None


class FailSettlement(Command):
    """trade.fail: the saga gave up; everything was compensated."""

    transfer_id: Identifier
    reason: Reason
    detail: Detail | None = None


class SettlementOutcome(BaseModel):
    """The reply to complete, reject and fail: the final status now recorded."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    transfer_id: Identifier
    status: SettlementStatus
