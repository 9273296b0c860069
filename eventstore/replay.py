"""Replaying the log into a table a page at a time: the inner loop of a rebuild, where its
speed is made.

Pages are read in commit order by keyset (`(tx_id, global_position)` after the last one) and
grow from FIRST_PAGE_EVENTS to MAX_PAGE_EVENTS, so progress shows at once and a long replay
pays few round trips. With a second connection the next page is read while this one is
folded, so PostgreSQL's reading overlaps Python's folding. Each page is folded by the
projection's `apply_batch` in one transaction that does not wait for its commit to reach the
disk: a crash loses only a shadow table, which the next rebuild drops anyway.
See docs/rebuild-speed.md for the measurements behind these choices.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final

from eventstore import reads
from eventstore._db import Connection
from eventstore.events import Position, RecordedEvent

if TYPE_CHECKING:
    from eventstore.projections import Projection
    from eventstore.store import EventStore

FIRST_PAGE_EVENTS: Final = 1_000
MAX_PAGE_EVENTS: Final = 10_000
"""A replay reads pages that double in size from the first to the largest."""

Replayed = Callable[[int], None]
"""Told how many events each page held, once the page is folded."""


async def replay_into(
    connection: Connection,
    store: EventStore,
    projection: Projection,
    table: str,
    after: Position,
    up_to: Position | None,
    replayed: Replayed,
    *,
    reader: Connection | None = None,
    settled_only: bool = True,
) -> Position:
    """Fold the events after `after` (up to `up_to`, inclusive) into `table` on `connection`,
    reading ahead on `reader` when given; return the position of the last event folded.

    `settled_only=False` reads every visible event: correct only while writers are held off.
    """

    async def page(after: Position, limit: int) -> list[RecordedEvent]:
        return await reads.fetch_in_commit_order(
            reader or connection, store.schema, after=after, limit=limit, up_to=up_to,
            settled_only=settled_only, upcasters=store.upcasters,
        )  # fmt: skip

    limit = FIRST_PAGE_EVENTS
    events = await page(after, limit)
    while events:
        after = events[-1].position
        limit = min(limit * 2, MAX_PAGE_EVENTS)
        ahead = asyncio.create_task(page(after, limit)) if reader is not None else None
        try:
            await _fold_page(connection, projection, table, events)
        except BaseException:
            if ahead is not None:
                ahead.cancel()
                await asyncio.gather(ahead, return_exceptions=True)
            raise
        replayed(len(events))
        events = await ahead if ahead is not None else await page(after, limit)
    return after


async def _fold_page(
    connection: Connection, projection: Projection, table: str, events: list[RecordedEvent]
) -> None:
    async with connection.transaction():
        await connection.execute("set local synchronous_commit = off")
        await projection.apply_batch(connection, table, events)


@asynccontextmanager
async def read_ahead_connection(store: EventStore) -> AsyncIterator[Connection | None]:
    """Another connection of the store's pool to read ahead on (None: the pool has one)."""
    if store.pool.get_max_size() < 2:
        yield None
        return
    async with store.pool.acquire() as reader:
        yield reader
