"""Bounds every service's routes put on request values the same way: times PostgreSQL can
be given, and positions within its bigint. Outside them a request is a 422, not a 500 from
the database driver."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Final

from pydantic import AfterValidator, AwareDatetime, BeforeValidator

MAX_POSITION: Final = 2**63 - 1
"""The largest PostgreSQL bigint: no global position or stream version is beyond it."""
_RFC3339_START: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}")


def _rfc3339(value: object) -> object:
    """Refuse what pydantic would otherwise take for a time, such as `0.5` (seconds since
    1970): the API documents RFC 3339 times, and a client sending a number made a mistake."""
    if isinstance(value, datetime) or (isinstance(value, str) and _RFC3339_START.match(value)):
        return value
    raise ValueError("expected an RFC 3339 time with its offset, like 2025-01-31T12:00:00Z")


def _in_utc(value: datetime) -> datetime:
    """The time in UTC; ValueError when that leaves years 1 to 9999 (`0001-01-01T00:00+14:00`)."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("the time in UTC is outside the years 1 to 9999") from None


Instant = Annotated[AwareDatetime, BeforeValidator(_rfc3339), AfterValidator(_in_utc)]
"""A time with its offset (RFC 3339), given to the routes in UTC."""


def is_position(value: object) -> bool:
    """Whether `value` could be a global position or a stream version (a forged cursor's
    key may be any JSON number)."""
    return type(value) is int and 0 <= value <= MAX_POSITION
