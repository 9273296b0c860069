"""Instants as an operator types them: ISO 8601, with an offset or in UTC."""

from __future__ import annotations

from datetime import UTC, datetime


def parse_instant(text: str) -> datetime:
    """`2024-05-01T12:00:00+02:00`, `2024-05-01T10:00Z`, `2024-05-01` (midnight) -> an aware
    datetime; a time without an offset is UTC. Raises ValueError with a message to show."""
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is not an ISO 8601 time (for example 2024-05-01T12:00:00Z)"
        ) from None
    instant = parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    try:  # every instant is shown and compared in UTC: one an offset takes past year 1..9999
        instant.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{text!r} is out of range in UTC (years 1 to 9999)") from None
    return instant


def format_instant(instant: datetime) -> str:
    """An instant in UTC to the microsecond, as the export writes it and reads it back."""
    return instant.astimezone(UTC).isoformat(timespec="microseconds")
