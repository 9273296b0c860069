"""What the trade API takes and gives: request and response models, and pure mappings from
rows to responses. Amounts cross the HTTP edge as decimal strings of their asset (DESIGN 3);
inside they are integers of minor units.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field

from ledger.money import AmountError, Assets
from ledger.problems import Problem
from trade_service.contracts import SettlementLeg
from trade_service.domain import (
    ASSET_LEG,
    CASH_LEG,
    TRANSFER_LEG,
    InvalidRequest,
    SettlementAlreadyFinal,
    SettlementError,
    SettlementNotFound,
)

RETRIED: Final = "retried"
"""The outcome of the step an operator sent a parked saga on with; its detail names them."""
ID_PATTERN: Final = r"^[A-Za-z0-9_.:-]{1,100}$"
"""Account and settlement ids, as the trade service's events accept them."""
MAX_CURSOR_CHARS: Final = 200

AccountId = Annotated[str, Field(pattern=ID_PATTERN)]
AssetCode = Annotated[str, Field(min_length=1, max_length=12, examples=["USD"])]
DecimalText = Annotated[str, Field(min_length=1, max_length=40, examples=["12.34"])]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TransferRequest(_Strict):
    """Move `amount` of `currency` from one account to another."""

    from_account: AccountId
    to_account: AccountId
    amount: DecimalText
    currency: AssetCode
    reference: Annotated[str, Field(min_length=1, max_length=200)] | None = None


class PartyAccounts(_Strict):
    cash_account: AccountId
    asset_account: AccountId


class TradeRequest(_Strict):
    """Delivery versus payment: `quantity` of `instrument` against quantity * `price`."""

    instrument: AssetCode
    quantity: DecimalText
    price: DecimalText = Field(description="Per unit of the instrument, in `currency`.")
    currency: AssetCode
    buyer: PartyAccounts
    seller: PartyAccounts


class Leg(BaseModel):
    id: str
    from_account: str
    to_account: str
    amount: str
    currency: str


class Step(BaseModel):
    """One step of the saga that settles the transfer or trade, as the saga recorded it."""

    seq: int
    step: str
    outcome: str
    at: datetime
    detail: str | None


class _Settlement(BaseModel):
    id: str
    status: str = Field(description="pending, completed, rejected or failed.")
    reason: str | None = Field(description="Why it was rejected or failed.")
    detail: str | None
    legs: list[Leg]
    steps: list[Step]
    created_at: datetime
    updated_at: datetime


class Transfer(_Settlement):
    from_account: str
    to_account: str
    amount: str
    currency: str
    reference: str | None


class Trade(_Settlement):
    instrument: str
    quantity: str
    price: str
    currency: str
    amount: str = Field(description="The cash paid: quantity * price, in `currency`.")
    buyer: PartyAccounts
    seller: PartyAccounts


class TransferPage(BaseModel):
    items: list[Transfer]
    next: str | None


class TradePage(BaseModel):
    items: list[Trade]
    next: str | None


def legs_of(row: Any) -> dict[str, SettlementLeg]:
    """The legs of a settlements row, by leg id."""
    legs = (SettlementLeg.model_validate(leg) for leg in orjson.loads(row["legs"]))
    return {leg.leg_id: leg for leg in legs}


def transfer_of(row: Any, steps: list[Step], assets: Assets) -> Transfer:
    """The response for a settlements row of a transfer."""
    leg = legs_of(row)[TRANSFER_LEG]
    return Transfer(
        **_common(row, steps, assets), from_account=leg.from_account, to_account=leg.to_account,
        amount=assets.format(leg.amount_minor, leg.currency), currency=leg.currency,
        reference=row["reference"],
    )


def trade_of(row: Any, steps: list[Step], assets: Assets) -> Trade:
    """The response for a settlements row of a trade."""
    legs = legs_of(row)
    cash, asset = legs[CASH_LEG], legs[ASSET_LEG]
    return Trade(
        **_common(row, steps, assets), instrument=row["instrument"],
        quantity=assets.format(row["quantity_minor"], row["instrument"]), price=row["price"],
        currency=cash.currency, amount=assets.format(cash.amount_minor, cash.currency),
        buyer=PartyAccounts(cash_account=cash.from_account, asset_account=asset.to_account),
        seller=PartyAccounts(cash_account=cash.to_account, asset_account=asset.from_account),
    )


def _common(row: Any, steps: list[Step], assets: Assets) -> dict[str, Any]:
    legs = [
        Leg(id=leg.leg_id, from_account=leg.from_account, to_account=leg.to_account,
            amount=assets.format(leg.amount_minor, leg.currency), currency=leg.currency)
        for leg in legs_of(row).values()
    ]
    return {
        "id": row["transfer_id"], "status": row["status"], "reason": row["reason"],
        "detail": row["detail"], "legs": legs, "steps": steps,
        "created_at": row["created_at"], "updated_at": row["updated_at"],
    }


SettlementView = TypeVar("SettlementView", Transfer, Trade)


def without_details(view: SettlementView) -> SettlementView:
    """`view` without the free text of why it was refused (its own and its steps'), for a
    reader who does not pay every leg (`trade_service.access.may_read_details`)."""
    steps = [step.model_copy(update={"detail": None}) for step in view.steps]
    return view.model_copy(update={"detail": None, "steps": steps})


def without_operators(view: SettlementView) -> SettlementView:
    """`view` without who sent its parked saga on (a `RETRIED` step's detail is "by <the
    operator's token subject>"), for a token bound to an owner: the back office's identity
    is not a customer's to read (`ledger.auth.metadata_for` keeps it out of event metadata)."""
    steps = [step.model_copy(update={"detail": None}) if step.outcome == RETRIED else step
             for step in view.steps]
    return view.model_copy(update={"steps": steps})


def problem_of(error: SettlementError | AmountError) -> Problem:
    """The problem+json answer to a request the trade service refuses."""
    if isinstance(error, AmountError):
        return Problem(422, str(error), code="invalid_amount")
    if isinstance(error, InvalidRequest):
        return Problem(422, str(error), code=error.code)
    if isinstance(error, SettlementNotFound):
        return Problem(404, str(error), code=error.code)
    if isinstance(error, SettlementAlreadyFinal):
        return Problem(409, str(error), code=error.code, status_now=error.status.value)
    return Problem(409, str(error), code=error.code)
