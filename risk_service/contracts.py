"""The risk service's public language: its events and the saga's commands.

Every decision is an event carrying the limits that were in force, so an auditor can see
why each movement was approved or refused. Amounts are integers of minor units.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, ClassVar, Final

from pydantic import BaseModel, ConfigDict, Field

from ledger.codec import DomainEvent
from ledger.commands import Command

MAX_LIMIT_MINOR: Final = 10**18
"""The largest limit of minor units an account may have (and the largest amount)."""
AmountMinor = Annotated[int, Field(gt=0, le=MAX_LIMIT_MINOR)]
LimitMinor = Annotated[int, Field(ge=0, le=MAX_LIMIT_MINOR)]
Identifier = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")]
AssetCode = Annotated[str, Field(pattern=r"^[A-Z][A-Z0-9]{1,11}$")]
"""A currency or instrument code, as `ledger.money` accepts them."""
Reason = Annotated[str, Field(min_length=1, max_length=500)]
Detail = Annotated[str, Field(max_length=1000)]


class RefusalReason(StrEnum):
    """Why a movement was refused: machine-readable, stable."""

    LIMIT_EXCEEDED = "limit_exceeded"
    DAILY_OUTFLOW_EXCEEDED = "daily_outflow_exceeded"
    EXPOSURE_EXCEEDED = "exposure_exceeded"
    ACCOUNT_BLOCKED = "account_blocked"
    ACCOUNT_FROZEN = "account_frozen"
    ACCOUNT_CLOSED = "account_closed"
    UNKNOWN_ACCOUNT = "unknown_account"
    CURRENCY_MISMATCH = "currency_mismatch"
    VELOCITY = "velocity"
    CANCELLED = "cancelled"
    """Released before it was assessed: its saga gave up on the assessment."""


class Limits(BaseModel):
    """The limits of one account; None means the default from settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    max_transfer_minor: LimitMinor | None = None
    daily_outflow_minor: LimitMinor | None = None
    max_open_exposure_minor: LimitMinor | None = None
    max_movements_per_minute: Annotated[int, Field(ge=1, le=100_000)] | None = None

    def over(self, defaults: Limits) -> Limits:
        """These limits, with every unset one taken from `defaults`."""
        return Limits(
            max_transfer_minor=_first(self.max_transfer_minor, defaults.max_transfer_minor),
            daily_outflow_minor=_first(self.daily_outflow_minor, defaults.daily_outflow_minor),
            max_open_exposure_minor=_first(
                self.max_open_exposure_minor, defaults.max_open_exposure_minor
            ),
            max_movements_per_minute=_first(
                self.max_movements_per_minute, defaults.max_movements_per_minute
            ),
        )


class RiskEvent(DomainEvent):
    """Base of the risk service's events."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    event_type: ClassVar[str]


class LimitsSet(RiskEvent):
    event_type: ClassVar[str] = "LimitsSet"
    limits: Limits


class AccountBlocked(RiskEvent):
    event_type: ClassVar[str] = "AccountBlocked"
    reason: Reason


class AccountUnblocked(RiskEvent):
    event_type: ClassVar[str] = "AccountUnblocked"
    reason: Reason


class ExposureReserved(RiskEvent):
    """Approved: `amount_minor` may leave the account for this leg of the transfer."""

    event_type: ClassVar[str] = "ExposureReserved"
    transfer_id: Identifier
    leg_id: Identifier
    amount_minor: AmountMinor
    currency: AssetCode
    decided_at: datetime
    limits: Limits


class MovementRefused(RiskEvent):
    """Refused, with the reason and the limits in force."""

    event_type: ClassVar[str] = "MovementRefused"
    transfer_id: Identifier
    leg_id: Identifier
    amount_minor: AmountMinor
    currency: AssetCode
    reason: RefusalReason
    detail: Detail
    decided_at: datetime
    limits: Limits


class ExposureCommitted(RiskEvent):
    """The movement happened: it now counts toward the daily outflow."""

    event_type: ClassVar[str] = "ExposureCommitted"
    transfer_id: Identifier
    leg_id: Identifier
    amount_minor: AmountMinor
    committed_at: datetime


class ExposureReleased(RiskEvent):
    """The movement did not happen: the exposure is freed and counts for nothing."""

    event_type: ClassVar[str] = "ExposureReleased"
    transfer_id: Identifier
    leg_id: Identifier
    amount_minor: AmountMinor


class ExposureCancelled(RiskEvent):
    """A release found no open exposure for this leg: its assessment had not arrived (its
    saga gave up waiting) or it had ended already. An assessment of it that arrives later
    is refused, so no exposure is left open that nobody would ever release."""

    event_type: ClassVar[str] = "ExposureCancelled"
    transfer_id: Identifier
    leg_id: Identifier
    cancelled_at: datetime


EVENT_TYPES: dict[str, type[RiskEvent]] = {
    model.event_type: model
    for model in (
        LimitsSet, AccountBlocked, AccountUnblocked, ExposureReserved, MovementRefused,
        ExposureCommitted, ExposureReleased, ExposureCancelled,
    )
}


class Movement(BaseModel):
    """One leg as risk sees it: money leaving `from_account` for `to_account`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    leg_id: Identifier
    from_account: Identifier
    to_account: Identifier
    amount_minor: AmountMinor
    currency: AssetCode


class Assess(Command):
    """Approve every movement of a transfer (reserving exposure) or refuse them all."""

    transfer_id: Identifier
    movements: tuple[Movement, ...] = Field(min_length=1, max_length=8)


class Commit(Command):
    """The transfer's movements happened."""

    transfer_id: Identifier
    movements: tuple[Movement, ...] = Field(min_length=1, max_length=8)


class Release(Command):
    """The transfer's movements will not happen (compensation)."""

    transfer_id: Identifier
    movements: tuple[Movement, ...] = Field(min_length=1, max_length=8)


class Decision(BaseModel):
    """The reply to assess, commit and release. A refusal is a decision, recorded as an
    event like an approval, so it is a normal reply, not a command refusal."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    transfer_id: Identifier
    approved: bool
    reason: RefusalReason | None = None
    detail: Detail | None = None


def _first(value: int | None, default: int | None) -> int | None:
    return value if value is not None else default
