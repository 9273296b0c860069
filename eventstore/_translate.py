"""Turn asyncpg's exceptions into the event store's typed errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import asyncpg

from eventstore.errors import (
    AppendOnlyViolation,
    ConcurrencyError,
    DuplicateEventError,
    EventStoreError,
    StoreUnavailable,
    TransientConflict,
)

_VERSION_MISMATCH: Final = "LE001"
_IDS_REUSED: Final = "LE003"
_APPEND_ONLY: Final = "LE010"
_UNIQUE_VIOLATION: Final = "23505"
_EVENT_ID_CONSTRAINT: Final = "events_event_id_key"
_RETRYABLE: Final = frozenset({"40P01", "40001"})  # deadlock, serialization failure

UNREACHABLE_ERRORS: Final = (OSError, asyncpg.InterfaceError, asyncpg.InternalClientError)
"""PostgreSQL cannot be reached, or a connection broke under a statement. InternalClientError:
asyncpg would not start a statement (a COMMIT, say) on a connection the server dropped in the
middle of another; seen while PostgreSQL restarts. Nothing was sent, so nothing committed."""
CONNECTION_ERRORS: Final = (asyncpg.PostgresError, *UNREACHABLE_ERRORS)
"""Every failure of a statement on a connection, for code that only logs and carries on."""


@contextmanager
def translated_errors(stream_id: str = "", expected_version: int = 0) -> Iterator[None]:
    """Re-raise asyncpg errors from the block as EventStoreError subclasses."""
    try:
        yield
    except asyncpg.PostgresError as error:
        raise _translate(error, stream_id, expected_version) from error
    except UNREACHABLE_ERRORS as error:
        raise StoreUnavailable(f"PostgreSQL is unavailable: {error}") from error


def _translate(error: asyncpg.PostgresError, stream_id: str, expected: int) -> EventStoreError:
    code = error.sqlstate
    if code == _VERSION_MISMATCH:
        detail = getattr(error, "detail", None) or "0"
        return ConcurrencyError(stream_id, expected, int(detail))
    if code == _IDS_REUSED or (
        code == _UNIQUE_VIOLATION
        and getattr(error, "constraint_name", None) == _EVENT_ID_CONSTRAINT
    ):
        return DuplicateEventError(f"append to {stream_id!r} reuses stored event ids: {error}")
    if code in _RETRYABLE:
        return TransientConflict(f"PostgreSQL aborted a transaction that may be retried: {error}")
    if code == _APPEND_ONLY:
        return AppendOnlyViolation(str(error))
    if isinstance(error, asyncpg.PostgresConnectionError | asyncpg.CannotConnectNowError):
        return StoreUnavailable(f"PostgreSQL is unavailable: {error}")
    return EventStoreError(f"PostgreSQL refused the operation ({code}): {error}")
