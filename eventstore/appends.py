"""Appending: checking an append, the arguments of `append_events` (the events' canonical
JSON and hash-chain bodies), and its result; shared by `EventStore` and `UnitOfWork`."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import asyncpg

from eventstore import reads
from eventstore._db import Connection
from eventstore._translate import translated_errors
from eventstore.errors import ConcurrencyError, InvalidEvent
from eventstore.events import ANY, STREAM_EXISTS, AppendResult, NewEvent, RecordedEvent
from eventstore.hashing import canonical_json, event_body
from eventstore.upcasting import check_schema_version

MAX_BATCH_EVENTS: Final = 10_000
"""The most events one append may carry."""
_STREAM_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,199}$")
_EVENT_TYPE: Final = re.compile(r"^[A-Za-z][A-Za-z0-9_.]{0,199}$")


@dataclass(frozen=True, slots=True)
class Append:
    """One stream's part of `UnitOfWork.append_many`."""

    stream_id: str
    events: Sequence[NewEvent]
    expected_version: int = ANY


APPEND_SQL: Final = (
    "select * from {schema}.append_events($1, $2, $3, $4, $5::jsonb[], $6::jsonb[], $7)"
)


async def append_on(
    connection: Connection,
    schema: str,
    stream_id: str,
    events: Sequence[NewEvent],
    expected_version: int,
) -> AppendResult:
    check_append(stream_id, events, expected_version)
    with translated_errors(stream_id, expected_version):
        rows = await connection.fetch(
            APPEND_SQL.format(schema=schema),
            *append_arguments(stream_id, events, expected_version),
        )
    return await append_result(connection, schema, stream_id, events, rows)


def append_arguments(
    stream_id: str, events: Sequence[NewEvent], expected_version: int
) -> tuple[Any, ...]:
    """`append_events`' arguments: the events' canonical JSON and hash-chain bodies."""
    ids, types, data, metadata, bodies = [], [], [], [], []
    for event in events:
        event_data = canonical_json(event.data)
        event_metadata = canonical_json(event.metadata)
        ids.append(event.event_id)
        types.append(event.event_type)
        data.append(event_data.decode())
        metadata.append(event_metadata.decode())
        bodies.append(
            event_body(stream_id, event.event_id, event.event_type, event_data, event_metadata)
        )
    return stream_id, expected_version, ids, types, data, metadata, bodies


async def append_result(
    connection: Connection,
    schema: str,
    stream_id: str,
    events: Sequence[NewEvent],
    rows: Sequence[asyncpg.Record],
) -> AppendResult:
    """The append's result from `append_events`' rows (one per event)."""
    rows = sorted(rows, key=lambda row: row["stream_version"])
    if rows[0]["is_duplicate"]:
        ids = [event.event_id for event in events]
        with translated_errors(stream_id):
            stored = await reads.fetch_by_ids(connection, schema, ids)
        assert [event.event_id for event in stored] == ids, "a retry returns its own events"
        return AppendResult(stream_id, tuple(stored), is_duplicate=True)
    recorded = [
        RecordedEvent(
            row["global_position"], stream_id, row["stream_version"], event.event_id,
            event.event_type, dict(event.data), dict(event.metadata), row["recorded_at"],
            row["tx_id"], row["hash"], row["prev_hash"],
        )
        for row, event in zip(rows, events, strict=True)
    ]
    return AppendResult(stream_id, tuple(recorded), is_duplicate=False)


_REFUSED_APPEND: Final = re.compile(
    r"^stream (\S+) (?:is at version -?\d+, expected (-?\d+)|does not exist)"
)
"""`append_events`' message for a version mismatch (stream ids hold no spaces)."""


def named_conflict(error: ConcurrencyError, appends: Sequence[Append]) -> ConcurrencyError:
    """`error` (from a pipelined batch, which does not say which append failed) with its
    stream and expected version, read from PostgreSQL's message."""
    cause = error.__cause__
    found = _REFUSED_APPEND.match(getattr(cause, "message", "") or str(cause))
    if found is None:
        return error
    stream_id, expected = found.group(1), found.group(2)
    if expected is None:  # the stream does not exist: the first append that needed it
        expected_versions = [a.expected_version for a in appends if a.stream_id == stream_id]
        if not expected_versions:
            return error
        expected = expected_versions[0]
    return ConcurrencyError(stream_id, int(expected), error.actual_version)


def check_append(stream_id: str, events: Sequence[NewEvent], expected_version: int) -> None:
    if not _STREAM_ID.match(stream_id):
        raise InvalidEvent(f"stream id {stream_id!r} must match {_STREAM_ID.pattern}")
    if not events:
        raise InvalidEvent("an append needs at least one event")
    if len(events) > MAX_BATCH_EVENTS:
        raise InvalidEvent(f"an append carries at most {MAX_BATCH_EVENTS} events")
    if expected_version < STREAM_EXISTS:
        raise InvalidEvent(f"expected version {expected_version} is not a version or a sentinel")
    for event in events:
        if not _EVENT_TYPE.match(event.event_type):
            raise InvalidEvent(f"event type {event.event_type!r} must match {_EVENT_TYPE.pattern}")
        # Reads hand both back as dicts and take the metadata's schema version as the shape:
        # an append they could not read back would stop every reader at it.
        if not (isinstance(event.data, dict) and isinstance(event.metadata, dict)):
            raise InvalidEvent(f"{event.event_type}: data and metadata must be JSON objects")
        check_schema_version(event.metadata)
    if len({event.event_id for event in events}) != len(events):
        raise InvalidEvent("an append carries the same event id twice")
