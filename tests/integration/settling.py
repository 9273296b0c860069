"""Waiting for commits to settle: a transaction anywhere on the server (another test's, a
benchmark's) holds back the xmin horizon that read_all and subscriptions respect."""

from __future__ import annotations

import asyncio

from eventstore import EventStore, Position


async def wait_settled(store: EventStore, position: Position, timeout_s: float = 10.0) -> None:
    """Return once every event up to `position` is visible to read_all."""
    async with asyncio.timeout(timeout_s):
        while True:
            settled = await store.pool.fetchval(
                "select $1::xid8 < pg_snapshot_xmin(pg_current_snapshot())", position.tx_id
            )
            if settled:
                return
            await asyncio.sleep(0.01)
