"""Snapshots: the latest folded state of a stream, a cache that saves replaying it whole."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from eventstore._db import Executor
from eventstore.hashing import canonical_json


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A stream's state as folded up to and including `stream_version`."""

    stream_id: str
    stream_version: int
    state: dict[str, Any]
    schema_version: int
    taken_at: datetime


async def save_snapshot(
    executor: Executor,
    schema: str,
    stream_id: str,
    stream_version: int,
    state: dict[str, Any],
    schema_version: int = 1,
) -> None:
    """Keep `state` as the stream's snapshot unless a newer one is already stored."""
    assert stream_version >= 1, "a snapshot follows at least one event"
    await executor.execute(
        f"insert into {schema}.snapshots (stream_id, stream_version, state, schema_version)"
        " values ($1, $2, $3::jsonb, $4)"
        " on conflict (stream_id) do update set stream_version = excluded.stream_version,"
        " state = excluded.state, schema_version = excluded.schema_version, taken_at = now()"
        f" where {schema}.snapshots.stream_version < excluded.stream_version"
        f" or {schema}.snapshots.schema_version <> excluded.schema_version",
        stream_id,
        stream_version,
        canonical_json(state).decode(),
        schema_version,
    )


async def load_snapshot(
    executor: Executor, schema: str, stream_id: str, schema_version: int = 1
) -> Snapshot | None:
    """The stream's latest snapshot, or None if there is none of `schema_version`."""
    row = await executor.fetchrow(
        f"select stream_version, state, schema_version, taken_at from {schema}.snapshots"
        " where stream_id = $1",
        stream_id,
    )
    if row is None or row["schema_version"] != schema_version:
        return None
    return Snapshot(
        stream_id, row["stream_version"], orjson.loads(row["state"]), row["schema_version"],
        row["taken_at"],
    )
