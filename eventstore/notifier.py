"""Wake-ups on append: one LISTEN connection per store, shared by any number of waiters.

Every append sends NOTIFY `<schema>_events` at commit. A waiter remembers the generation it
last saw and waits for a newer one or a timeout; polling after the timeout is the fallback
while the LISTEN connection is lost, so a missed notification costs latency, never an event.
A lost connection (PostgreSQL restarted, the backend terminated) is replaced in the
background, with backoff, and waiters are woken on both edges to look for what they missed.
A connection that dies without a word (a network partition, a host that vanished) is found
out by a probe that asks it to answer now and then, and is dropped and replaced the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType
from typing import Any, Final

from asyncpg.pool import PoolConnectionProxy

from eventstore._translate import CONNECTION_ERRORS
from eventstore.store import EventStore

_log = logging.getLogger(__name__)

RELISTEN_FIRST_S: Final = 0.1
"""The first wait before listening again on a new connection, doubled per failure..."""
RELISTEN_MAX_S: Final = 5.0
"""...up to this: a PostgreSQL that is down costs a warning and a try every 5 s at most."""
PROBE_EVERY_S: Final = 30.0
"""How often the LISTEN connection must answer a `select 1`: a connection that died
silently is found out within PROBE_EVERY_S + PROBE_TIMEOUT_S, meanwhile waiters poll."""
PROBE_TIMEOUT_S: Final = 10.0
"""How long a probe may take before the connection counts as dead."""


class Notifier:
    """Tells waiters that something was appended to a store since they last looked."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.channel = f"{store.schema}_events"
        self.generation = 0
        self._changed = asyncio.Event()
        self._connection: PoolConnectionProxy[Any] | None = None
        self._relistening: asyncio.Task[None] | None = None
        self._probing: asyncio.Task[None] | None = None
        self._is_closed = False

    async def __aenter__(self) -> Notifier:
        return await self.open()

    @property
    def is_listening(self) -> bool:
        """Whether notifications from other processes reach this notifier now."""
        return self._connection is not None

    async def open(self) -> Notifier:
        """Start waking waiters; `close` stops (`async with` does both)."""
        if not await self._listen():
            self._relisten()
        # Only once nothing can fail: nothing closes a notifier whose opening raised.
        self.store.announcer.listen_locally(self._on_local_append)
        return self

    async def _listen(self) -> bool:
        """LISTEN on a connection of its own; without one, waiters fall back to polling."""
        try:
            connection = await self.store.pool.acquire()
        except CONNECTION_ERRORS as error:
            _log.warning("%s: no LISTEN connection, polling only: %s", self.channel, error)
            return False
        try:
            await connection.add_listener(self.channel, self._on_notify)
            # A connection lost since is detached from its proxy already: InterfaceError.
            connection.add_termination_listener(self._on_connection_lost)
        except BaseException as error:
            # Cancelled or failed half way: the connection goes back (a no-op once detached),
            # or the pool would lose it for good (__aexit__ does not run when __aenter__ did
            # not finish).
            await self.store.pool.release(connection)
            if not isinstance(error, CONNECTION_ERRORS):
                raise
            _log.warning("%s: LISTEN failed, polling only: %s", self.channel, error)
            return False
        self._connection = connection
        self._probing = asyncio.create_task(self._probe(connection))
        return True

    async def _probe(self, connection: PoolConnectionProxy[Any]) -> None:
        """Ask the LISTEN connection to answer now and then. TCP tells nobody of a peer that
        went silent, and the notifications would just stop: one that does not answer in time
        is dropped, and replaced (`_on_connection_lost`) as if PostgreSQL had closed it."""
        while True:
            await asyncio.sleep(PROBE_EVERY_S)
            try:
                async with asyncio.timeout(PROBE_TIMEOUT_S):
                    await connection.fetchval("select 1")
            except (TimeoutError, *CONNECTION_ERRORS) as error:
                if self._connection is connection:  # not lost, closed or replaced meanwhile
                    _log.warning(
                        "%s: LISTEN connection did not answer a probe, dropping it: %r",
                        self.channel, error,
                    )  # fmt: skip
                    connection.terminate()  # _on_connection_lost follows, a turn later
                return

    def _on_connection_lost(self, _connection: object) -> None:
        """asyncpg calls this when the LISTEN connection closes under us; the pool has
        already taken it back."""
        if self._is_closed or self._connection is None or self.store.pool.is_closing():
            return
        self._connection = None
        self._stop_probing()
        _log.warning("%s: LISTEN connection lost, polling until it is back", self.channel)
        self._on_local_append()  # anything in flight may have lost its notification
        self._relisten()

    def _stop_probing(self) -> None:
        probing, self._probing = self._probing, None
        if probing is not None and probing is not asyncio.current_task():
            probing.cancel()  # a probe that found the loss has returned by itself

    def _relisten(self) -> None:
        if self._relistening is None or self._relistening.done():
            self._relistening = asyncio.create_task(self._listen_again())

    async def _listen_again(self) -> None:
        """LISTEN on a new connection as soon as one works, then wake every waiter: what
        was appended meanwhile by other processes announced itself to nobody."""
        delay_s = RELISTEN_FIRST_S
        while True:
            await asyncio.sleep(delay_s)
            if self.store.pool.is_closing():
                return
            try:
                if await self._listen():
                    break
            except Exception:  # a bug, not an outage: loud, but the waiters keep a listener
                _log.exception("%s: listening again failed", self.channel)
            delay_s = min(delay_s * 2, RELISTEN_MAX_S)
        _log.info("%s: listening again", self.channel)
        self._on_local_append()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop waking waiters; give the LISTEN connection back."""
        self._is_closed = True
        self.store.announcer.stop_listening_locally(self._on_local_append)
        if self._relistening is not None:
            self._relistening.cancel()
            await asyncio.wait({self._relistening})  # unlike awaiting it, keeps our own cancel
        probing, self._probing = self._probing, None
        if probing is not None:  # before the connection goes back: no probe on a released one
            probing.cancel()
            await asyncio.wait({probing})
        connection, self._connection = self._connection, None
        if connection is None:
            return
        # The connection may have been lost a moment ago, its callback not yet run: the
        # proxy is detached then, and both calls raise InterfaceError.
        with contextlib.suppress(*CONNECTION_ERRORS):
            connection.remove_termination_listener(self._on_connection_lost)
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
