"""What the risk API takes and gives: request and response models, and pure mappings from
states and rows to responses. Limits and amounts cross the HTTP edge as decimal strings of
the account's currency (DESIGN 3); inside they are integers of minor units.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Final

import orjson
from pydantic import BaseModel, ConfigDict, Field

from ledger.money import AmountError, Assets
from risk_service.contracts import MAX_LIMIT_MINOR, Limits
from risk_service.domain import AccountView, RiskState

ID_PATTERN: Final = r"^[A-Za-z0-9_.:-]{1,100}$"
"""Account ids, as the account service's events accept them."""
MAX_CURSOR_CHARS: Final = 200
_ZERO: Final = re.compile(r"^0(\.(0+))?$")

LimitText = Annotated[
    str | None,
    Field(min_length=1, max_length=40, examples=["1000.00"],
          description="A decimal of the account's currency; \"0\" refuses every movement;"
                      " null or absent: the default from settings."),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SetLimits(_Strict):
    """The account's limits, replacing those it had: an absent or null one is the default."""

    max_transfer: LimitText = None
    daily_outflow: LimitText = None
    max_open_exposure: LimitText = None
    # Strict: a JSON `true` is not a count (lax validation would take it for 1).
    max_movements_per_minute: Annotated[int, Field(ge=1, le=100_000, strict=True)] | None = None


class Reason(_Strict):
    reason: Annotated[str, Field(min_length=1, max_length=500)]


class LimitsOut(BaseModel):
    """Limits as decimal strings of the account's currency; null means no limit."""

    max_transfer: str | None
    daily_outflow: str | None
    max_open_exposure: str | None
    max_movements_per_minute: int | None


class RiskAccount(BaseModel):
    account_id: str
    currency: str
    status: str = Field(description="As the account service last said: open, frozen, closed.")
    is_blocked: bool
    blocked_reason: str | None
    limits: LimitsOut = Field(description="The limits in force: the account's own, else the"
                                          " defaults from settings.")
    defaulted: list[str] = Field(description="The names of the limits taken from the defaults.")
    open_exposure: str = Field(description="Approved movements not yet settled or released.")
    outflow_24h: str = Field(description="Settled outflow in the 24 hours up to now.")
    movements_last_minute: int
    version: int = Field(description="The account's risk stream version (0: nothing yet).")


class Outcome(StrEnum):
    APPROVED = "approved"
    REFUSED = "refused"


class DecisionOut(BaseModel):
    position: int = Field(description="The decision's global position in the risk store.")
    account_id: str
    transfer_id: str
    leg_id: str
    outcome: Outcome
    reason: str | None
    detail: str | None
    amount: str | None = Field(description="null only if the currency is unknown here.")
    currency: str
    limits: LimitsOut = Field(description="The limits in force when it was decided.")
    decided_at: datetime


class DecisionPage(BaseModel):
    items: list[DecisionOut]
    next: str | None


def limits_of(body: SetLimits, assets: Assets, currency: str) -> Limits:
    """The body's limits in minor units of `currency`; AmountError for a malformed one.

    The per-movement limit is bounded by the largest amount one request may move; the daily
    outflow and the open exposure add up many movements, so only by the largest limit."""
    totals = Assets(assets.scales, MAX_LIMIT_MINOR)
    return Limits(
        max_transfer_minor=_limit_minor(body.max_transfer, assets, currency),
        daily_outflow_minor=_limit_minor(body.daily_outflow, totals, currency),
        max_open_exposure_minor=_limit_minor(body.max_open_exposure, totals, currency),
        max_movements_per_minute=body.max_movements_per_minute,
    )


def risk_account_of(
    view: AccountView, state: RiskState, defaults: Limits, now: datetime, assets: Assets
) -> RiskAccount:
    """The response for an account's view and risk state at `now`."""
    currency = view.currency
    own = state.limits.model_dump()
    return RiskAccount(
        account_id=view.account_id, currency=currency, status=view.status,
        is_blocked=state.blocked_reason is not None, blocked_reason=state.blocked_reason,
        limits=limits_out(state.limits.over(defaults), assets, currency),
        defaulted=[name.removesuffix("_minor") for name, value in own.items() if value is None],
        open_exposure=assets.format(state.open_exposure_minor, currency),
        outflow_24h=assets.format(state.outflow_minor(now), currency),
        movements_last_minute=state.movements_last_minute(now), version=state.version,
    )


def limits_out(limits: Limits, assets: Assets, currency: str) -> LimitsOut:
    """Limits as decimal strings of `currency` (null: none; also null if `currency` is
    unknown to this ledger, which only a decision on a bogus currency can carry)."""
    return LimitsOut(
        max_transfer=_money(limits.max_transfer_minor, assets, currency),
        daily_outflow=_money(limits.daily_outflow_minor, assets, currency),
        max_open_exposure=_money(limits.max_open_exposure_minor, assets, currency),
        max_movements_per_minute=limits.max_movements_per_minute,
    )


def decision_of(row: Any, assets: Assets) -> DecisionOut:
    """The response for a risk_decisions row, its limits in the account's currency."""
    limits_currency = row["account_currency"] or row["currency"]
    return DecisionOut(
        position=row["global_position"], account_id=row["account_id"],
        transfer_id=row["transfer_id"], leg_id=row["leg_id"], outcome=Outcome(row["outcome"]),
        reason=row["reason"], detail=row["detail"],
        amount=_money(row["amount_minor"], assets, row["currency"]), currency=row["currency"],
        limits=limits_out(Limits.model_validate(orjson.loads(row["limits"])), assets,
                          limits_currency),
        decided_at=row["decided_at"],
    )


def _limit_minor(text: str | None, assets: Assets, currency: str) -> int | None:
    """A limit in minor units: none, zero (refuse all), or a valid positive amount."""
    if text is None:
        return None
    zero = _ZERO.match(text)
    if zero is None:
        return assets.parse(text, currency)
    scale = assets.scale(currency)
    if len(zero.group(2) or "") > scale:
        raise AmountError(f"{currency} has {scale} decimals; {text!r} has more")
    return 0


def _money(amount_minor: int | None, assets: Assets, currency: str) -> str | None:
    if amount_minor is None or currency not in assets.scales:
        return None
    return assets.format(amount_minor, currency)
