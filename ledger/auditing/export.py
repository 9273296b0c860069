"""`ledger audit export`: the events of a period with their chain fields, for an external
auditor, written atomically (a temporary file renamed into place, so the file at `out` is
whole or absent).

The period is half-open, [since, until), by `recorded_at`. Within one stream `recorded_at`
grows with the version since migration 0008, but events appended before may go back (it
was the appending transaction's start time), so each stream's range is closed: every
version between the first and the last one recorded in the period is exported, and a file
never holds a stream with a gap. See docs/audit-export.md.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Final

import orjson

from eventstore import EventStore
from eventstore._db import Connection
from eventstore.reads import COLUMNS, decode
from ledger.auditing.export_format import end_record, event_record, header_record
from ledger.auditing.stores import AuditStores

_PREFETCH_ROWS: Final = 2_000
_PERIOD: Final = (
    "with bounds as (select stream_id, min(stream_version) as first_version,"
    " max(stream_version) as last_version from {schema}.events"
    " where recorded_at >= $1 and recorded_at < $2 group by stream_id)"
)

OnEvents = Callable[[int], None]


class PeriodNotOver(ValueError):
    """The period may still gain events: it ends in the future, or a transaction that
    started before its end is still running."""


@dataclass(frozen=True, slots=True)
class ExportReport:
    """What the file holds."""

    path: Path
    events: int
    streams: int


async def events_in_period(
    stores: AuditStores, services: Sequence[str], since: datetime, until: datetime
) -> int:
    """How many events exporting the period will write (for a progress bar)."""
    total = 0
    for service in services:
        store = stores.get(service)
        if store is not None:
            total += int(await store.pool.fetchval(
                _PERIOD.format(schema=store.schema)
                + " select coalesce(sum(last_version - first_version + 1), 0) from bounds",
                since, until,
            ))  # fmt: skip
    return total


async def export_period(
    stores: AuditStores,
    services: Sequence[str],
    since: datetime,
    until: datetime,
    out: Path,
    on_events: OnEvents | None = None,
) -> ExportReport:
    """Write the period's events of `services` to `out`, atomically.

    Raises PeriodNotOver, and OSError when the file cannot be written.
    """
    present = [service for service in services if stores.get(service) is not None]
    assert present, "the caller checks that some service has a store"
    schemas = {service: _store(stores, service).schema for service in present}
    temporary = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
    events = streams = 0
    try:
        # Plain buffered writes: the export is this process's only work, and a file write
        # hands its bytes to the kernel without waiting for the disk (fsync is at the end).
        with temporary.open("wb") as file:
            is_header_written = False
            for service in present:
                store = _store(stores, service)
                async with store.pool.acquire() as connection, connection.transaction(
                    isolation="repeatable_read", readonly=True
                ):
                    now = await _check_period_over(connection, until)
                    if not is_header_written:
                        _write(file, header_record(since, until, schemas, now))
                        is_header_written = True
                    written = await _export_service(connection, store, service, since, until,
                                                    file, on_events)  # fmt: skip
                events, streams = events + written[0], streams + written[1]
            _write(file, end_record(events, streams))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, out)
        _sync_directory(out.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
    return ExportReport(out, events, streams)


async def _check_period_over(connection: Connection, until: datetime) -> datetime:
    """The database's time now; PeriodNotOver if events recorded before `until` may still
    commit (`recorded_at` is never before the appending transaction began), or if this role
    cannot see when other roles' transactions began (it then cannot tell)."""
    row = await connection.fetchrow(
        "select now() as now, count(*) filter (where a.xact_start < $1) as running,"
        " count(*) filter (where a.query = '<insufficient privilege>') as unseen"
        " from (select 1) as one left join pg_stat_activity as a"
        "   on a.datname = current_database() and a.pid <> pg_backend_pid()"
        # Another role's session is all nulls to a role without pg_read_all_stats, its
        # backend type too: counted as unseen, not as a client backend.
        "   and (a.backend_type = 'client backend' or a.query = '<insufficient privilege>')",
        until,
    )  # fmt: skip
    assert row is not None, "one row"
    if until > row["now"]:
        raise PeriodNotOver("--until is in the future: a period is exported once it is over")
    if row["unseen"]:
        raise PeriodNotOver(
            f"this database role cannot see {row['unseen']} other session(s) (their"
            " transactions' start is hidden from it), so it cannot tell whether the period is"
            " over: grant it pg_read_all_stats, or export as the services' role"
        )
    if row["running"]:
        raise PeriodNotOver(
            f"{row['running']} transaction(s) that began before --until are still running and"
            " may still record events in the period; export again when they end"
        )
    now: datetime = row["now"]
    return now


async def _export_service(
    connection: Connection, store: EventStore, service: str, since: datetime, until: datetime,
    file: IO[bytes], on_events: OnEvents | None,
) -> tuple[int, int]:
    events = streams = 0
    stream_id = None
    cursor = connection.cursor(
        _PERIOD.format(schema=store.schema) + f" select {_qualified_columns()}"
        f" from bounds as b join {store.schema}.events as e on e.stream_id = b.stream_id"
        "  and e.stream_version between b.first_version and b.last_version"
        " order by e.stream_id, e.stream_version",
        since, until, prefetch=_PREFETCH_ROWS,
    )  # fmt: skip
    async for row in cursor:
        event = decode(row)
        if event.stream_id != stream_id:
            stream_id = event.stream_id
            streams += 1
        _write(file, event_record(service, event))
        events += 1
        if on_events is not None and events % _PREFETCH_ROWS == 0:
            on_events(_PREFETCH_ROWS)
    if on_events is not None:
        on_events(events % _PREFETCH_ROWS)
    return events, streams


def _qualified_columns() -> str:
    return ", ".join(f"e.{column.strip()}" for column in COLUMNS.split(","))


def _write(file: IO[bytes], record: dict[str, Any]) -> None:
    file.write(orjson.dumps(record) + b"\n")


def _store(stores: AuditStores, service: str) -> EventStore:
    store = stores.get(service)
    assert store is not None, "only services with a store are exported"
    return store


def _sync_directory(directory: Path) -> None:
    """Make the rename durable: fsync the directory that holds the file."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
