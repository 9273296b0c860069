"""What the state machine sends: request bodies built from the model's accounts, and the
requests that can never settle."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from hypothesis import strategies as st

from tests.system.harness import ACME, USD
from tests.system.model import LegModel

AMOUNTS: Final = st.integers(min_value=1, max_value=60_000)
"""Minor units: up to 600.00 USD or 60,000 ACME; accounts are funded with about as much."""
REJECTED: Final = frozenset({"unknown payer", "unknown payee", "currency mismatch"})
"""Transfers the trade service accepts and the saga must reject."""
_BAD_AMOUNT: Final = frozenset({"invalid_amount", "validation_failed"})
INVALID_REQUESTS: Final[dict[str, tuple[dict[str, Any], frozenset[str]]]] = {
    "zero": ({"amount": "0"}, _BAD_AMOUNT),
    "zero with decimals": ({"amount": "0.00"}, _BAD_AMOUNT),
    "negative": ({"amount": "-1.00"}, _BAD_AMOUNT),
    "too precise": ({"amount": "1.001"}, _BAD_AMOUNT),
    "comma": ({"amount": "12,00"}, _BAD_AMOUNT),
    "exponent": ({"amount": "1e3"}, _BAD_AMOUNT),
    "words": ({"amount": "ten"}, _BAD_AMOUNT),
    "empty": ({"amount": ""}, _BAD_AMOUNT),
    "too large": ({"amount": "100000000000000.00"}, _BAD_AMOUNT),
    "number": ({"amount": 12.5}, _BAD_AMOUNT),
    "unknown currency": ({"currency": "XXX"}, frozenset({"unknown_currency"})),
    "extra field": ({"colour": "red"}, frozenset({"validation_failed"})),
    "same account": ({}, frozenset({"same_account"})),
    "no key": ({}, frozenset({"idempotency_key_required"})),
}
"""Transfer requests that can never settle, and the problem codes they may be refused with."""


@dataclass(frozen=True, slots=True)
class SettlementRequest:
    """A transfer or trade to request: its body and the legs it would move."""

    kind: str
    body: dict[str, Any]
    legs: tuple[LegModel, ...]


@dataclass(frozen=True, slots=True)
class Sent:
    """A request whose answer the ledger keeps under its Idempotency-Key."""

    path: str
    body: dict[str, Any]
    key: str
    status: int
    answer: dict[str, Any]


def another_body(body: dict[str, Any]) -> dict[str, Any]:
    """A valid request that differs from `body` (so its fingerprint differs)."""
    field = next(name for name in ("amount", "quantity", "owner") if name in body)
    other = "another-owner" if field == "owner" else "2"
    return body | {field: other if body[field] != other else "3"}


def text_of(amount_minor: int, currency: str) -> str:
    """Minor units as the API's decimal string."""
    if currency == ACME:
        return str(amount_minor)
    return f"{amount_minor // 100}.{amount_minor % 100:02d}"




@dataclass(frozen=True, slots=True)
class Party:
    """One side of a trade: the accounts of its cash and of its instrument."""

    cash_account: str
    asset_account: str


def transfer_request(from_account: str, to_account: str, amount_minor: int, currency: str
                     ) -> SettlementRequest:  # fmt: skip
    """A transfer of `amount_minor` and the leg it would move."""
    body = {"from_account": from_account, "to_account": to_account,
            "amount": text_of(amount_minor, currency), "currency": currency}  # fmt: skip
    return SettlementRequest("transfer", body,
                             (LegModel(from_account, to_account, amount_minor, currency),))


def trade_request(buyer: Party, seller: Party, quantity: int, price_cents: int
                  ) -> SettlementRequest:  # fmt: skip
    """A trade of `quantity` ACME at `price_cents` USD each, and its two legs."""
    body = {"instrument": ACME, "quantity": str(quantity), "price": text_of(price_cents, USD),
            "currency": USD,
            "buyer": {"cash_account": buyer.cash_account, "asset_account": buyer.asset_account},
            "seller": {"cash_account": seller.cash_account,
                       "asset_account": seller.asset_account}}  # fmt: skip
    legs = (LegModel(buyer.cash_account, seller.cash_account, quantity * price_cents, USD),
            LegModel(seller.asset_account, buyer.asset_account, quantity, ACME))  # fmt: skip
    return SettlementRequest("trade", body, legs)
