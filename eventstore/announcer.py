"""Announcing appends to listeners, after commit and coalesced.

A NOTIFY inside the appending transaction takes PostgreSQL's global notify lock for the rest
of the commit, so concurrent appends would commit one at a time (their WAL flushes no longer
group). The store instead sends one `NOTIFY <schema>_events` from a separate, tiny
transaction after its appends commit, at most one in flight, merging every append that
lands meanwhile. A lost announcement costs a listener one polling interval, never an event.

Listeners in the same process are told at once, without the round trip through PostgreSQL
(`listen_locally`): the relay and the consumers of a service usually run beside its appends,
and waiting for the coalesced NOTIFY cost them 10-20 ms of lag (docs/relay-throughput.md).
The NOTIFY carries this announcer's `origin` so that those listeners skip their own echo.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from typing import Any, Final

import asyncpg

from eventstore._translate import CONNECTION_ERRORS

_log = logging.getLogger(__name__)
_COALESCE_S: Final = 0.01
"""At most one NOTIFY per store each 10 ms: listeners learn of appends that much later."""


class Announcer:
    """Sends coalesced NOTIFYs for one store's channel; owned and closed by the store."""

    def __init__(self, pool: asyncpg.Pool[Any], channel: str) -> None:
        self.pool = pool
        self.channel = channel
        self.origin = uuid.uuid4().hex
        """The payload of this announcer's NOTIFYs."""
        self._is_due = False
        self._is_echo_wanted = False
        self._sending: asyncio.Task[None] | None = None
        self._local: list[Callable[[], None]] = []

    def listen_locally(self, wake: Callable[[], None]) -> None:
        """Call `wake` after each commit announced here (it must not block)."""
        self._local.append(wake)

    def stop_listening_locally(self, wake: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._local.remove(wake)

    def announce(self, *, is_committed: bool = True) -> None:
        """Note that something was committed: wake local listeners, a NOTIFY follows shortly.

        From inside a transaction that has yet to commit, pass `is_committed=False`: local
        listeners woken now would look too early, so they learn of it from the NOTIFY, as
        other processes do, which normally leaves after the commit.
        """
        if is_committed:
            for wake in self._local:
                wake()
        else:
            self._is_echo_wanted = True
        self._is_due = True
        if self._sending is None or self._sending.done():
            self._sending = asyncio.get_running_loop().create_task(self._send())

    async def close(self) -> None:
        """Stop announcing; wait for the NOTIFY in flight, if any."""
        if self._sending is not None:
            self._sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sending

    async def _send(self) -> None:
        while self._is_due:
            await asyncio.sleep(_COALESCE_S)
            self._is_due = False
            # An echo wanted: no origin, so that this process's listeners take it too.
            origin = "" if self._is_echo_wanted else self.origin
            self._is_echo_wanted = False
            try:
                await self.pool.execute("select pg_notify($1, $2)", self.channel, origin)
            except CONNECTION_ERRORS as error:
                _log.debug("NOTIFY %s not sent: %s", self.channel, error)
                return
