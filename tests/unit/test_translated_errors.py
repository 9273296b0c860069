"""asyncpg's errors become the store's own: a connection in trouble is `StoreUnavailable`
(HTTP 503, retried by consumers and sagas), never an unexplained error (HTTP 500)."""

from __future__ import annotations

import asyncpg
import pytest

from eventstore import StoreUnavailable
from eventstore._translate import translated_errors


@pytest.mark.parametrize(
    "error",
    [
        # Seen while PostgreSQL restarted under load: asyncpg refuses to send a COMMIT on a
        # connection the server dropped in the middle of another statement.
        asyncpg.InternalClientError("cannot switch to state 15; another operation in progress"),
        asyncpg.InterfaceError("connection is closed"),
        ConnectionResetError("reset by peer"),
    ],
)
def test_a_connection_in_trouble_is_store_unavailable(error: Exception) -> None:
    with pytest.raises(StoreUnavailable), translated_errors():
        raise error
