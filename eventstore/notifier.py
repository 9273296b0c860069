"""Wake-ups on append: one LISTEN connection per store, shared by any number of waiters.

Every append sends NOTIFY `<schema>_events` at commit. A waiter remembers the generation it
last saw and waits for a newer one or a timeout; polling after the timeout is the fallback
when the LISTEN connection is lost, so a missed notification costs latency, never an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType
from typing import Any

from asyncpg.pool import PoolConnectionProxy

from eventstore._translate import CONNECTION_ERRORS
from eventstore.store import EventStore

_log = logging.getLogger(__name__)


class Notifier:
    """Tells waiters that something was appended to a store since they last looked."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.channel = f"{store.schema}_events"
        self.generation = 0
        self._changed = asyncio.Event()
        self._connection: PoolConnectionProxy[Any] | None = None

    async def __aenter__(self) -> Notifier:
        return await self.open()

    async def open(self) -> Notifier:
        """Start waking waiters; `close` stops (`async with` does both)."""
        await self._listen()
        # Only once nothing can fail: nothing closes a notifier whose opening raised.
        self.store.announcer.listen_locally(self._on_local_append)
        return self

    async def _listen(self) -> None:
        """LISTEN on a connection of its own; without one, waiters fall back to polling."""
        try:
            connection = await self.store.pool.acquire()
        except CONNECTION_ERRORS as error:
            _log.warning("%s: no LISTEN connection, polling only: %s", self.channel, error)
            return
        try:
            await connection.add_listener(self.channel, self._on_notify)
        except BaseException as error:
            # Cancelled or failed half way: the connection goes back, or the pool would
            # lose it for good (__aexit__ does not run when __aenter__ did not finish).
            await self.store.pool.release(connection)
            if not isinstance(error, CONNECTION_ERRORS):
                raise
            _log.warning("%s: LISTEN failed, polling only: %s", self.channel, error)
            return
        self._connection = connection

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop waking waiters; give the LISTEN connection back."""
        self.store.announcer.stop_listening_locally(self._on_local_append)
        connection, self._connection = self._connection, None
        if connection is None:
            return
        with contextlib.suppress(*CONNECTION_ERRORS):
            await connection.remove_listener(self.channel, self._on_notify)
        await self.store.pool.release(connection)

    async def wait_past(self, generation: int, timeout_s: float) -> None:
        """Return when an append newer than `generation` is known, or after `timeout_s`."""
        if self.generation > generation:
            return
        changed = self._changed
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that
        # arrives as the event is set, and a subscription loop cancelled so would run on.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await changed.wait()

    def _on_notify(self, _connection: Any, _pid: int, _channel: str, origin: object) -> None:
        if origin != self.store.announcer.origin:  # this process's own appends woke us already
            self._on_local_append()

    def _on_local_append(self) -> None:
        self.generation += 1
        self._changed.set()
        self._changed = asyncio.Event()
