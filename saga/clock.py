"""The database's time, read on this host: one clock for every orchestrator and starter.

Leases (`saga_runs.lease_until`) and deadlines (`SagaStarted.deadline_at`) are written by
one host and judged by another. On each host's own clock, a host whose clock ran 20 s ahead
took over sagas whose lease another, live orchestrator was renewing, and one 6 minutes
ahead failed new sagas on their deadline before their first step (found in review). This
clock is the host's clock plus its offset from PostgreSQL's `clock_timestamp()`, measured
at start and again every `refresh_s`: hosts then disagree by the error of the measurement
(half a round trip), not by their clocks' drift. The saga log's `recorded_at` is the
database's time already.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Final

import asyncpg

from eventstore._translate import CONNECTION_ERRORS

_log = logging.getLogger(__name__)

REFRESH_S: Final = 60.0
"""How often the offset is measured again (clocks drift, NTP steps them)."""


def utc_now() -> datetime:
    """This host's clock."""
    return datetime.now(UTC)


class DatabaseClock:
    """`clock()` is the database's time now, as well as this host can tell."""

    def __init__(
        self, pool: asyncpg.Pool, *, local: Callable[[], datetime] = utc_now,
        refresh_s: float = REFRESH_S,
    ) -> None:
        self._pool = pool
        self._local = local
        self._refresh_s = refresh_s
        self.offset = timedelta(0)
        """The database's clock minus this host's, as last measured."""

    def __call__(self) -> datetime:
        return self._local() + self.offset

    async def synchronize(self) -> None:
        """Measure the offset: the database's time against the middle of the round trip."""
        before = self._local()
        database_now: datetime = await self._pool.fetchval("select clock_timestamp()")
        after = self._local()
        self.offset = database_now - (before + (after - before) / 2)

    async def run(self) -> None:
        """Measure the offset again every `refresh_s` until cancelled; an outage keeps the
        last one (a clock drifts by milliseconds a minute)."""
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                await self.synchronize()
            except CONNECTION_ERRORS as error:
                _log.warning("the database's clock could not be read, keeping the offset: %r",
                             error)  # fmt: skip
