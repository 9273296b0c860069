"""What `ledger audit replay` prints, without a database: the balance line of an account
whose asset this shell's settings do not know falls back to minor units, as the table does."""

from __future__ import annotations

from datetime import UTC, datetime
from types import MappingProxyType

import pytest

from account_service.domain import AccountState, Status
from ledger.auditing import AccountHistory, parse_instant
from ledger.cli.audit_views import balance_line
from ledger.money import Assets

STATE = AccountState("a-1", "o", "ACME", 0, Status.OPEN, 1_234, 34, 0, MappingProxyType({}), 3)


def test_a_balance_line_of_an_unknown_asset_is_in_minor_units() -> None:
    history = AccountHistory("a-1", "ACME", [], STATE, None)

    line = balance_line(history, Assets())

    assert "1234 minor units ACME" in line
    assert "available 1200 minor units" in line


def test_a_balance_line_of_a_known_asset_is_in_its_decimals() -> None:
    history = AccountHistory("a-1", "ACME", [], STATE, datetime(2026, 1, 1, tzinfo=UTC))

    line = balance_line(history, Assets({"ACME": 2}))

    assert "12.34 ACME" in line
    assert "available 12.00" in line


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_an_instant_out_of_range_in_utc_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="out of range"):
        parse_instant(text)
