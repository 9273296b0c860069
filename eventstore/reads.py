"""Reading events back: one stream by version, or everything in commit order.

Commit order uses the rule of docs/read-all-order.md: a reader takes only rows whose
transaction is older than every transaction still running, ordered by `(tx_id,
global_position)`, so an event that commits late is never skipped.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

import asyncpg
import orjson

from eventstore._db import Executor
from eventstore.events import Direction, Position, RecordedEvent
from eventstore.upcasting import Upcasters

_FIRST_HORIZON_PAUSE_S: Final = 0.002
_MAX_HORIZON_PAUSE_S: Final = 0.05
"""How `settled_horizon` polls: from 2 ms, doubling up to 50 ms between looks."""

_loads = orjson.loads
_new_event = tuple.__new__

COLUMNS: Final = (
    "global_position, stream_id, stream_version, event_id, event_type, data, metadata,"
    " recorded_at, tx_id, hash, prev_hash"
)


def decode(row: asyncpg.Record, upcasters: Upcasters | None = None) -> RecordedEvent:
    """Turn a row selected with COLUMNS into a RecordedEvent, upcast when upcasters are given."""
    position, stream, version, event_id, event_type, data, metadata, at, tx, hash_, prev = row
    # tuple.__new__ skips the named tuple's generated __new__ (a Python-level call): reads
    # decode ~100,000 rows a second and this is a quarter of the Python cost of each.
    event: RecordedEvent = _new_event(
        RecordedEvent,
        (position, stream, version, event_id, event_type, _loads(data), _loads(metadata),
         at, tx, hash_, prev),
    )  # fmt: skip
    return upcasters.upcast(event) if upcasters else event


async def fetch_stream(
    executor: Executor,
    schema: str,
    stream_id: str,
    *,
    from_version: int,
    direction: Direction,
    limit: int,
    upcasters: Upcasters | None,
) -> list[RecordedEvent]:
    """Events of one stream from `from_version` on, in the given direction."""
    if direction is Direction.FORWARD:
        condition, order = "stream_version >= $2", "asc"
    else:
        condition, order = "stream_version <= $2", "desc"
    rows = await executor.fetch(
        f"select {COLUMNS} from {schema}.events where stream_id = $1 and {condition}"
        f" order by stream_version {order} limit $3",
        stream_id,
        from_version,
        limit,
    )
    return [decode(row, upcasters) for row in rows]


async def fetch_in_commit_order(
    executor: Executor,
    schema: str,
    *,
    after: Position,
    limit: int,
    category: str | None = None,
    up_to: Position | None = None,
    settled_only: bool = True,
    upcasters: Upcasters | None = None,
) -> list[RecordedEvent]:
    """Events after `after` in `(tx_id, global_position)` order.

    `settled_only` applies the xmin rule (the default, and the only safe choice for a reader
    that keeps a checkpoint). `up_to` bounds the read, inclusive. `settled_only=False` returns
    every committed row visible now: correct only while writers are locked out.
    """
    conditions = ["(tx_id, global_position) > ($1::xid8, $2::bigint)"]
    arguments: list[object] = [after.tx_id, after.global_position, limit]
    if settled_only:
        conditions.append("tx_id < pg_snapshot_xmin(pg_current_snapshot())")
    if category is not None:
        arguments.append(category)
        conditions.append(f"category = ${len(arguments)}")
    if up_to is not None:
        arguments.extend(up_to)
        count = len(arguments)
        conditions.append(f"(tx_id, global_position) <= (${count - 1}::xid8, ${count}::bigint)")
    rows = await executor.fetch(
        f"select {COLUMNS} from {schema}.events where {' and '.join(conditions)}"
        " order by tx_id, global_position limit $3",
        *arguments,
    )
    return [decode(row, upcasters) for row in rows]


async def has_settled_after(
    executor: Executor, schema: str, after: Position, *, category: str | None = None
) -> bool:
    """Whether a settled event (the xmin rule) follows `after` in commit order."""
    arguments: list[object] = [after.tx_id, after.global_position]
    condition = ""
    if category is not None:
        arguments.append(category)
        condition = " and category = $3"
    # Ordered like `fetch_in_commit_order`, so that the plan walks the same index from `after`.
    found = await executor.fetchval(
        f"select 1 from {schema}.events"
        " where (tx_id, global_position) > ($1::xid8, $2::bigint)"
        f" and tx_id < pg_snapshot_xmin(pg_current_snapshot()){condition}"
        " order by tx_id, global_position limit 1",
        *arguments,
    )
    return found is not None


async def settled_horizon(executor: Executor, patience_s: float) -> int:
    """A transaction id below which no transaction is running, waited for until it passes
    every transaction that had committed when called (so a read below it shows them all), for
    at most `patience_s`; after that, the horizon of the moment (the xmin rule).

    Rows read below the horizon in `(tx_id, ...)` order are final in that order: nothing can
    commit among them later. The wait is for transactions in flight when called (normally a
    few milliseconds); a long one elsewhere costs `patience_s` and leaves its followers out.
    """
    row = await executor.fetchrow(
        "select pg_snapshot_xmin(s), pg_snapshot_xmax(s) from pg_current_snapshot() s"
    )
    assert row is not None, "a select without from gives one row"
    # xmin: no transaction below it is running. xmax: every transaction that had committed
    # when called is below it (it is the newest completed one's id plus one).
    xmin, wanted = row[0], row[1]
    deadline = time.monotonic() + patience_s
    pause_s = _FIRST_HORIZON_PAUSE_S
    while xmin < wanted and time.monotonic() < deadline:
        await asyncio.sleep(pause_s)
        pause_s = min(pause_s * 2, _MAX_HORIZON_PAUSE_S)
        xmin = await executor.fetchval("select pg_snapshot_xmin(pg_current_snapshot())")
    return int(xmin)


async def place_of(executor: Executor, schema: str, global_position: int) -> Position | None:
    """The place in commit order of the event at `global_position`, or None if none is."""
    row = await executor.fetchrow(
        f"select tx_id, global_position from {schema}.events where global_position = $1",
        global_position,
    )
    return None if row is None else Position(row[0], row[1])


async def fetch_by_ids(
    executor: Executor, schema: str, event_ids: list[Any]
) -> list[RecordedEvent]:
    """The stored events with these ids, in stream version order."""
    rows = await executor.fetch(
        f"select {COLUMNS} from {schema}.events where event_id = any($1::uuid[])"
        " order by stream_id, stream_version",
        event_ids,
    )
    return [decode(row) for row in rows]
