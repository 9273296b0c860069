"""A pool connection kept by one loop (a subscription, a consumer) while it is busy."""

from __future__ import annotations

from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from eventstore._db import Connection
from eventstore._translate import translated_errors


class ConnectionLease:
    """One pool connection kept from batch to batch while work keeps coming.

    A loop that took a connection from the pool for every batch would queue behind every
    other user of the pool (appends, requests) and pay the pool's reset on each return:
    under load, tens of milliseconds of lag per batch (docs/relay-latency.md). The owner
    gives the connection back when it goes idle or after an error, and on exit.
    """

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool
        self._connection: PoolConnectionProxy[Any] | None = None

    async def __aenter__(self) -> ConnectionLease:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.release()

    async def connection(self) -> Connection:
        """The leased connection, taken from the pool if none is held.

        Raises StoreUnavailable when the pool cannot give one.
        """
        if self._connection is None:
            with translated_errors():
                self._connection = await self._pool.acquire()
        return self._connection

    async def release(self) -> None:
        """Give the connection back to the pool (which replaces it if it broke)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            await self._pool.release(connection)
