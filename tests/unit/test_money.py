"""Money at the edges: decimal strings to integer minor units and back, exactly."""

from __future__ import annotations

import pytest

from ledger.money import DEFAULT_MAX_AMOUNT_MINOR, AmountError, Assets

ASSETS = Assets()


@pytest.mark.parametrize(
    ("text", "asset", "amount_minor"),
    [
        ("12.34", "USD", 1234),
        ("12", "USD", 1200),
        ("12.3", "EUR", 1230),
        ("0.01", "USD", 1),
        ("12.340", "USD", 1234),
        ("1.0000000000000000000000000000", "USD", 100),
        ("500", "JPY", 500),
        ("500.0", "JPY", 500),
        ("0.00000001", "BTC", 1),
        ("21000000", "BTC", 2_100_000_000_000_000),
    ],
)
def test_parse_gives_minor_units_at_the_assets_scale(
    text: str, asset: str, amount_minor: int
) -> None:
    assets = Assets(max_amount_minor=10**18)

    assert assets.parse(text, asset) == amount_minor


def test_parse_refuses_a_sub_unit_amount_beyond_decimals_precision() -> None:
    with pytest.raises(AmountError, match="USD has 2 decimals"):
        ASSETS.parse("1.0000000000000000000000000001", "USD")


@pytest.mark.parametrize(
    ("text", "asset"), [("1.001", "USD"), ("1.5", "JPY"), ("0.000000001", "BTC")]
)
def test_parse_refuses_more_decimals_than_the_scale(text: str, asset: str) -> None:
    with pytest.raises(AmountError, match=f"{asset} has"):
        ASSETS.parse(text, asset)


@pytest.mark.parametrize(
    "text",
    [
        "", "-1", "+1", "1e3", "1E3", " 1", "1 ", "12.34\n", "1.", ".5", "01", "00.5", "1,00",
        "abc", "NaN", "Infinity", "\uff11\uff12", "1_000", "1" * 32, "1." + "0" * 31,
    ],
)  # fmt: skip
def test_parse_refuses_what_is_not_a_plain_positive_decimal(text: str) -> None:
    with pytest.raises(AmountError, match="is not a positive decimal"):
        ASSETS.parse(text, "USD")


@pytest.mark.parametrize("text", ["0", "0.00", "0.000"])
def test_parse_refuses_zero(text: str) -> None:
    with pytest.raises(AmountError, match="greater than zero"):
        ASSETS.parse(text, "USD")


def test_parse_refuses_more_than_the_maximum_and_names_it() -> None:
    assets = Assets(max_amount_minor=10_000)

    assert assets.parse("100.00", "USD") == 10_000
    with pytest.raises(AmountError, match=r"maximum of 100\.00"):
        assets.parse("100.01", "USD")


def test_parse_and_format_refuse_an_unknown_asset_and_list_the_known() -> None:
    with pytest.raises(AmountError, match=r"unknown currency or instrument 'XYZ'.*USD"):
        ASSETS.parse("1", "XYZ")
    with pytest.raises(AmountError, match="unknown currency"):
        ASSETS.format(1, "XYZ")


@pytest.mark.parametrize(
    ("amount_minor", "asset", "text"),
    [
        (1234, "USD", "12.34"),
        (1, "USD", "0.01"),
        (100, "USD", "1.00"),
        (-1234, "USD", "-12.34"),
        (-5, "USD", "-0.05"),
        (0, "USD", "0.00"),
        (500, "JPY", "500"),
        (1, "BTC", "0.00000001"),
    ],
)
def test_format_writes_every_decimal_of_the_scale(
    amount_minor: int, asset: str, text: str
) -> None:
    assert ASSETS.format(amount_minor, asset) == text


@pytest.mark.parametrize("asset", ["USD", "JPY", "BTC", "ACME"])
@pytest.mark.parametrize("amount_minor", [1, 7, 10, 99, 100, 101, 123_456_789, 10**15])
def test_format_then_parse_is_the_identity(asset: str, amount_minor: int) -> None:
    assets = Assets({"USD": 2, "JPY": 0, "BTC": 8, "ACME": 18}, DEFAULT_MAX_AMOUNT_MINOR)

    assert assets.parse(assets.format(amount_minor, asset), asset) == amount_minor


def test_instruments_bring_their_own_scale() -> None:
    assets = Assets({"ACME": 0, "USD": 2})

    assert assets.scale("ACME") == 0
    assert assets.parse("3", "ACME") == 3
    with pytest.raises(AmountError, match="ACME has 0 decimals"):
        assets.parse("3.5", "ACME")
