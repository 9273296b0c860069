"""The trade service's domain: requests become their events with the right legs, the cash
of a trade is exact, and a settlement ends exactly once."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from trade_service import domain
from trade_service.contracts import (
    SettlementCompleted,
    SettlementLeg,
    SettlementRejected,
    SettlementStatus,
    TradeRequested,
    TransferRequested,
)
from trade_service.domain import (
    AccountAssetConflict,
    InexactAmount,
    InvalidPrice,
    Party,
    Price,
    SameAccount,
    SameAsset,
    Settlement,
    SettlementAlreadyFinal,
    SettlementKind,
    TradeOrder,
)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
BUYER = Party("buyer-cash", "buyer-shares")
SELLER = Party("seller-cash", "seller-shares")


def a_transfer() -> Settlement:
    events = domain.request_transfer("t-1", "a", "b", 1234, "USD", "rent", NOW)
    state = domain.fold(events)
    assert state is not None
    return state


def an_order(**changes: object) -> TradeOrder:
    fields: dict[str, object] = {
        "instrument": "ACME", "quantity_minor": 10, "price": Price(125, 1), "currency": "USD",
        "cash_minor": 12500, "buyer": BUYER, "seller": SELLER,
    }
    return TradeOrder(**(fields | changes))  # type: ignore[arg-type]


def test_a_transfer_request_is_one_leg_from_payer_to_payee() -> None:
    events = domain.request_transfer("t-1", "a", "b", 1234, "USD", "rent", NOW)

    assert events == [TransferRequested(
        transfer_id="t-1", reference="rent", requested_at=NOW,
        legs=(SettlementLeg(leg_id="transfer", from_account="a", to_account="b",
                            amount_minor=1234, currency="USD", kind="transfer"),),
    )]


def test_a_transfer_to_the_same_account_is_refused() -> None:
    with pytest.raises(SameAccount):
        domain.request_transfer("t-1", "a", "a", 1, "USD", None, NOW)


def test_a_trade_moves_cash_to_the_seller_and_the_instrument_to_the_buyer() -> None:
    [event] = domain.request_trade("t-2", an_order(), NOW)

    assert isinstance(event, TradeRequested)
    cash, asset = event.legs
    assert (cash.from_account, cash.to_account, cash.amount_minor, cash.currency) == (
        "buyer-cash", "seller-cash", 12500, "USD")
    assert (asset.from_account, asset.to_account, asset.amount_minor, asset.currency) == (
        "seller-shares", "buyer-shares", 10, "ACME")
    assert event.price == "12.5"
    assert {cash.kind, asset.kind} == {"trade"}


@pytest.mark.parametrize(
    ("order", "error"),
    [
        (an_order(seller=Party("buyer-cash", "seller-shares")), SameAccount),
        (an_order(seller=Party("seller-cash", "buyer-shares")), SameAccount),
        (an_order(seller=Party("seller-cash", "buyer-cash")), AccountAssetConflict),
        (an_order(instrument="USD"), SameAsset),
    ],
)
def test_a_trade_that_can_never_settle_is_refused(
    order: TradeOrder, error: type[Exception]
) -> None:
    with pytest.raises(error):
        domain.request_trade("t-2", order, NOW)


@pytest.mark.parametrize(
    ("quantity_minor", "instrument_scale", "price", "currency_scale", "cash_minor"),
    [
        (10, 0, "12.34", 2, 12340),
        (8, 0, "0.125", 2, 100),
        (150, 2, "2", 0, 3),  # 1.50 units at 2 JPY
        (10**8, 8, "30000.01", 2, 3000001),  # 1 BTC
    ],
)
def test_the_cash_of_a_trade_is_quantity_times_price_exactly(
    quantity_minor: int, instrument_scale: int, price: str, currency_scale: int,
    cash_minor: int,
) -> None:
    assert domain.cash_amount_minor(quantity_minor, instrument_scale, domain.parse_price(price),
                                    "USD", currency_scale) == cash_minor


@pytest.mark.parametrize(("quantity_minor", "instrument_scale", "price"),
                         [(3, 0, "0.333"), (1, 8, "30000")])
def test_a_cash_amount_with_more_decimals_than_the_currency_is_refused(
    quantity_minor: int, instrument_scale: int, price: str
) -> None:
    with pytest.raises(InexactAmount):
        domain.cash_amount_minor(quantity_minor, instrument_scale, domain.parse_price(price),
                                 "USD", 2)


@pytest.mark.parametrize("text", ["0", "0.00", "-1", "1e3", "", "1.", ".5", "1," + "0" * 3,
                                  "1." + "1" * 19])
def test_a_price_that_is_not_a_positive_decimal_is_refused(text: str) -> None:
    with pytest.raises(InvalidPrice):
        domain.parse_price(text)


def test_a_price_drops_trailing_zeros() -> None:
    assert domain.parse_price("12.500") == Price(125, 1)
    assert str(domain.parse_price("0.050")) == "0.05"
    assert str(domain.parse_price("7")) == "7"


def test_a_requested_settlement_is_pending() -> None:
    state = a_transfer()

    assert (state.status, state.kind, state.version) == (
        SettlementStatus.PENDING, SettlementKind.TRANSFER, 1)


def test_completing_a_pending_settlement_completes_it() -> None:
    events = domain.complete(a_transfer(), NOW)

    assert events == [SettlementCompleted(transfer_id="t-1", completed_at=NOW)]
    after = domain.fold(events, a_transfer())
    assert after is not None
    assert (after.status, after.version) == (SettlementStatus.COMPLETED, 2)


def test_completing_twice_is_a_no_op() -> None:
    completed = domain.fold(domain.complete(a_transfer(), NOW), a_transfer())
    assert completed is not None

    assert domain.complete(completed, NOW) == []


def test_rejecting_keeps_the_reason_and_a_second_reject_is_a_no_op() -> None:
    events = domain.reject(a_transfer(), "unknown_account", "account x", NOW)
    rejected = domain.fold(events, a_transfer())

    assert events == [SettlementRejected(transfer_id="t-1", reason="unknown_account",
                                         detail="account x", rejected_at=NOW)]
    assert rejected is not None
    assert (rejected.status, rejected.reason) == (SettlementStatus.REJECTED, "unknown_account")
    assert domain.reject(rejected, "other", None, NOW) == []


@pytest.mark.parametrize("first", ["reject", "fail"])
def test_completing_after_a_refusal_or_failure_is_an_error(first: str) -> None:
    ended = (domain.reject if first == "reject" else domain.fail)(a_transfer(), "r", None, NOW)
    state = domain.fold(ended, a_transfer())
    assert state is not None

    with pytest.raises(SettlementAlreadyFinal) as raised:
        domain.complete(state, NOW)

    assert raised.value.status is state.status


def test_failing_after_completion_is_an_error() -> None:
    completed = domain.fold(domain.complete(a_transfer(), NOW), a_transfer())
    assert completed is not None

    with pytest.raises(SettlementAlreadyFinal):
        domain.fail(completed, "timeout", None, NOW)
