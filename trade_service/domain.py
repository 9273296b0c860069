"""Transfers and trades as the customer sees them: requested, then completed, rejected or
failed, exactly once.

Pure: no I/O. A request becomes its `...Requested` event with the legs the saga settles; an
outcome is decided against the settlement's state (a repeated outcome is a no-op, a
different one after the first is refused). Errors a client can cause are named, with a
`code` (DESIGN 3, STYLE 1, 15).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Final

from trade_service.contracts import (
    SettlementCompleted,
    SettlementFailed,
    SettlementLeg,
    SettlementRejected,
    SettlementStatus,
    TradeEvent,
    TradeRequested,
    TransferRequested,
)

TRANSFER_LEG: Final = "transfer"
CASH_LEG: Final = "cash"
ASSET_LEG: Final = "asset"
MAX_PRICE_DECIMALS: Final = 18
_PRICE: Final = re.compile(rf"(0|[1-9][0-9]{{0,17}})(?:\.([0-9]{{1,{MAX_PRICE_DECIMALS}}}))?")


class SettlementKind(StrEnum):
    """A transfer (one leg) or a delivery-versus-payment trade (two legs)."""

    TRANSFER = "transfer"
    TRADE = "trade"


class SettlementError(Exception):
    """A request or outcome the trade service refuses; `code` is machine-readable."""

    code = "refused"


class InvalidRequest(SettlementError):
    """A request that can never settle, whatever the accounts hold (an HTTP 422)."""

    code = "invalid_request"


class SameAccount(InvalidRequest):
    code = "same_account"

    def __init__(self, account_id: str, leg: str) -> None:
        super().__init__(f"the {leg} leg moves from account {account_id} to itself")


class AccountAssetConflict(InvalidRequest):
    code = "account_asset_conflict"

    def __init__(self, account_id: str) -> None:
        super().__init__(
            f"account {account_id} is on both the cash and the asset leg, but an account"
            " holds one asset"
        )


class SameAsset(InvalidRequest):
    code = "same_asset"

    def __init__(self, asset: str) -> None:
        super().__init__(f"a trade exchanges an instrument for cash; both are {asset}")


class InvalidPrice(InvalidRequest):
    code = "invalid_price"


class InexactAmount(InvalidRequest):
    code = "inexact_amount"


class SettlementNotFound(SettlementError):
    code = "unknown_transfer"

    def __init__(self, transfer_id: str) -> None:
        super().__init__(f"transfer or trade {transfer_id} does not exist")


class SettlementAlreadyFinal(SettlementError):
    """An outcome other than the one already recorded: a settlement ends once."""

    code = "already_final"

    def __init__(self, transfer_id: str, status: SettlementStatus, wanted: SettlementStatus
                 ) -> None:
        super().__init__(f"{transfer_id} is {status.value} already; it cannot be {wanted.value}")
        self.status = status


@dataclass(frozen=True, slots=True)
class Price:
    """A positive decimal price: `units` / 10**`scale` (trailing zeros dropped)."""

    units: int
    scale: int

    def __str__(self) -> str:
        if self.scale == 0:
            return str(self.units)
        digits = str(self.units).rjust(self.scale + 1, "0")
        return f"{digits[:-self.scale]}.{digits[-self.scale:]}"


def parse_price(text: str) -> Price:
    """`"12.50"` -> Price(125, 1). Raises InvalidPrice for a malformed, zero or negative one."""
    match = _PRICE.fullmatch(text)
    if match is None:
        raise InvalidPrice(
            f"price {text[:40]!r} is not a positive decimal like '12.34'"
            f" (at most {MAX_PRICE_DECIMALS} decimals)"
        )
    decimals = (match[2] or "").rstrip("0")
    units = int(match[1] + decimals)
    if units == 0:
        raise InvalidPrice("price must be greater than zero")
    return Price(units, len(decimals))


def cash_amount_minor(
    quantity_minor: int, instrument_scale: int, price: Price, currency: str, currency_scale: int
) -> int:
    """quantity * price in minor units of the currency; InexactAmount when it has more
    decimals than the currency (never rounded: money is not created by rounding)."""
    numerator = quantity_minor * price.units * 10**currency_scale
    denominator = 10 ** (instrument_scale + price.scale)
    amount_minor: int = numerator // denominator
    if numerator % denominator:
        raise InexactAmount(
            f"quantity * price is not a whole amount of {currency} ({currency_scale} decimals)"
        )
    return amount_minor


@dataclass(frozen=True, slots=True)
class Party:
    """One side of a trade: where its cash and its instrument are held."""

    cash_account: str
    asset_account: str


@dataclass(frozen=True, slots=True)
class TradeOrder:
    """A validated trade: amounts in minor units, the cash amount computed."""

    instrument: str
    quantity_minor: int
    price: Price
    currency: str
    cash_minor: int
    buyer: Party
    seller: Party


def request_transfer(
    transfer_id: str, from_account: str, to_account: str, amount_minor: int, currency: str,
    reference: str | None, now: datetime,
) -> list[TradeEvent]:
    """The events of a new transfer: one leg. Raises SameAccount."""
    if from_account == to_account:
        raise SameAccount(from_account, TRANSFER_LEG)
    leg = SettlementLeg(leg_id=TRANSFER_LEG, from_account=from_account, to_account=to_account,
                        amount_minor=amount_minor, currency=currency, kind="transfer")
    return [TransferRequested(transfer_id=transfer_id, legs=(leg,), reference=reference,
                              requested_at=now)]


def request_trade(transfer_id: str, order: TradeOrder, now: datetime) -> list[TradeEvent]:
    """The events of a new trade: cash from buyer to seller, the instrument from seller to
    buyer, settled both or neither. Raises SameAsset, SameAccount, AccountAssetConflict."""
    if order.instrument == order.currency:
        raise SameAsset(order.currency)
    buyer, seller = order.buyer, order.seller
    if buyer.cash_account == seller.cash_account:
        raise SameAccount(buyer.cash_account, CASH_LEG)
    if buyer.asset_account == seller.asset_account:
        raise SameAccount(buyer.asset_account, ASSET_LEG)
    cash_accounts = {buyer.cash_account, seller.cash_account}
    for account_id in (seller.asset_account, buyer.asset_account):
        if account_id in cash_accounts:
            raise AccountAssetConflict(account_id)
    cash = SettlementLeg(leg_id=CASH_LEG, from_account=buyer.cash_account,
                         to_account=seller.cash_account, amount_minor=order.cash_minor,
                         currency=order.currency, kind="trade")
    asset = SettlementLeg(leg_id=ASSET_LEG, from_account=seller.asset_account,
                          to_account=buyer.asset_account, amount_minor=order.quantity_minor,
                          currency=order.instrument, kind="trade")
    return [TradeRequested(transfer_id=transfer_id, instrument=order.instrument,
                           quantity_minor=order.quantity_minor, price=str(order.price),
                           legs=(cash, asset), requested_at=now)]


@dataclass(frozen=True, slots=True)
class Settlement:
    """A transfer or trade as its events left it."""

    transfer_id: str
    kind: SettlementKind
    legs: tuple[SettlementLeg, ...]
    status: SettlementStatus
    reason: str | None
    detail: str | None
    version: int

    @property
    def is_final(self) -> bool:
        return self.status is not SettlementStatus.PENDING


def complete(state: Settlement, now: datetime) -> list[TradeEvent]:
    """Completed: the legs were posted. A no-op when completed already; raises
    SettlementAlreadyFinal when it was rejected or failed."""
    if not _is_open_for(state, SettlementStatus.COMPLETED):
        return []
    return [SettlementCompleted(transfer_id=state.transfer_id, completed_at=now)]


def reject(state: Settlement, reason: str, detail: str | None, now: datetime
           ) -> list[TradeEvent]:
    """Rejected (a business refusal, nothing moved). A no-op when rejected already (the first
    reason stands); raises SettlementAlreadyFinal when it completed or failed."""
    if not _is_open_for(state, SettlementStatus.REJECTED):
        return []
    return [SettlementRejected(transfer_id=state.transfer_id, reason=reason, detail=detail,
                               rejected_at=now)]


def fail(state: Settlement, reason: str, detail: str | None, now: datetime) -> list[TradeEvent]:
    """Failed (the saga gave up and compensated). A no-op when failed already; raises
    SettlementAlreadyFinal when it completed or was rejected."""
    if not _is_open_for(state, SettlementStatus.FAILED):
        return []
    return [SettlementFailed(transfer_id=state.transfer_id, reason=reason, detail=detail,
                             failed_at=now)]


def _is_open_for(state: Settlement, wanted: SettlementStatus) -> bool:
    """True if `wanted` is still to be recorded; False if it is already the outcome."""
    if state.status is wanted:
        return False
    if state.is_final:
        raise SettlementAlreadyFinal(state.transfer_id, state.status, wanted)
    return True


def evolve(state: Settlement | None, event: TradeEvent) -> Settlement:
    """The settlement after `event`: the only way its state changes."""
    match event:
        case TransferRequested() | TradeRequested():
            assert state is None, "a settlement is requested once"
            kind = (SettlementKind.TRANSFER if isinstance(event, TransferRequested)
                    else SettlementKind.TRADE)
            return Settlement(event.transfer_id, kind, event.legs, SettlementStatus.PENDING,
                              None, None, 1)
        case SettlementCompleted():
            return _ended(state, SettlementStatus.COMPLETED, None, None)
        case SettlementRejected() | SettlementFailed():
            status = (SettlementStatus.REJECTED if isinstance(event, SettlementRejected)
                      else SettlementStatus.FAILED)
            return _ended(state, status, event.reason, event.detail)
    raise AssertionError(f"unknown trade event {type(event).__name__}")


def fold(events: list[TradeEvent], state: Settlement | None = None) -> Settlement | None:
    """The state after every event, in order."""
    for event in events:
        state = evolve(state, event)
    return state


def _ended(
    state: Settlement | None, status: SettlementStatus, reason: str | None, detail: str | None
) -> Settlement:
    assert state is not None, "an outcome follows a request"
    assert not state.is_final, "a settlement ends once"
    return replace(state, status=status, reason=reason, detail=detail, version=state.version + 1)
