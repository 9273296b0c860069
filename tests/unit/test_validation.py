"""The bounds routes put on times and cursor positions (ledger.validation)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import TypeAdapter, ValidationError

from ledger.validation import MAX_POSITION, Instant, is_position

INSTANT: TypeAdapter[datetime] = TypeAdapter(Instant)


def test_an_instant_is_given_in_utc() -> None:
    assert INSTANT.validate_python("2025-01-31T13:00:00+01:00") == datetime(
        2025, 1, 31, 12, 0, tzinfo=UTC
    )


@pytest.mark.parametrize(
    "text",
    [
        "0001-01-01T00:00:00+14:00",  # before year 1 in UTC
        "9999-12-31T23:59:59-14:00",  # after year 9999 in UTC
        "0.5",  # seconds since 1970 to pydantic, a mistake to us
        "1700000000",
        "2025-01-31T12:00:00",  # no offset: whose noon?
        "yesterday",
    ],
)
def test_an_instant_refuses_what_is_no_rfc3339_time_in_the_calendar(text: str) -> None:
    with pytest.raises(ValidationError):
        INSTANT.validate_python(text)


@pytest.mark.parametrize("value", [0, 1, MAX_POSITION])
def test_a_position_is_a_bigint_at_least_zero(value: int) -> None:
    assert is_position(value)


@pytest.mark.parametrize("value", [-1, MAX_POSITION + 1, 1.0, True, "1", None])
def test_anything_else_is_no_position(value: object) -> None:
    assert not is_position(value)
