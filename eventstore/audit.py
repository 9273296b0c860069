"""Verify a store's hash chains: every link recomputed, every version present, every head true."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from asyncpg import Record

from eventstore import reads
from eventstore._translate import translated_errors
from eventstore.events import RecordedEvent
from eventstore.hashing import ChainBreak, find_break
from eventstore.store import EventStore

_PREFETCH_ROWS: Final = 2_000


@dataclass(slots=True)
class ChainReport:
    """The outcome of `verify_chains`: how much was checked and every stream that breaks."""

    streams: int = 0
    events: int = 0
    breaks: list[ChainBreak] = field(default_factory=list)

    @property
    def is_intact(self) -> bool:
        """True when no chain breaks."""
        return not self.breaks

    @property
    def first_break(self) -> ChainBreak | None:
        """The first break found (streams in id order), if any."""
        return self.breaks[0] if self.breaks else None


async def verify_chains(
    store: EventStore,
    stream_id: str | None = None,
    *,
    on_events: Callable[[int], None] | None = None,
) -> ChainReport:
    """Recompute the chain of every stream (or of one) from the stored rows, raw, not upcast.

    `on_events(n)` is called as each stream is checked, with its number of events (progress
    of a long verification).
    """
    report = ChainReport()
    where = "where stream_id = $1" if stream_id is not None else ""
    arguments = [stream_id] if stream_id is not None else []
    with translated_errors():
        # One snapshot for heads and events: appends committing meanwhile are not half seen.
        async with store.pool.acquire() as connection, connection.transaction(
            isolation="repeatable_read", readonly=True
        ):
            heads = {
                row[0]: (row[1], row[2])
                for row in await connection.fetch(
                    f"select stream_id, version, last_hash from {store.schema}.streams {where}",
                    *arguments,
                )
            }
            cursor = connection.cursor(
                f"select {reads.COLUMNS} from {store.schema}.events {where}"
                " order by stream_id, stream_version",
                *arguments,
                prefetch=_PREFETCH_ROWS,
            )
            stream = _Stream("")
            async for row in cursor:
                if row["stream_id"] != stream.stream_id:
                    _finish(report, stream, heads, on_events)
                    stream = _Stream(row["stream_id"])
                stream.add(row)
            _finish(report, stream, heads, on_events)
    for empty_stream in sorted(heads):
        report.breaks.append(ChainBreak(empty_stream, 1, "stream has a head but no events"))
    report.breaks.sort(key=lambda item: item.stream_id)
    return report


@dataclass(slots=True)
class _Stream:
    """One stream's rows as the cursor yields them: decoded up to the first that does not
    decode (stored data changed behind the store's back, e.g. a number no JSON reader
    takes), which is then the stream's break unless an earlier link breaks first."""

    stream_id: str
    events: list[RecordedEvent] = field(default_factory=list)
    rows: int = 0
    undecodable: ChainBreak | None = None

    def add(self, row: Record) -> None:
        self.rows += 1
        if self.undecodable is not None:
            return
        try:
            self.events.append(reads.decode(row))
        except ValueError as error:  # orjson's JSONDecodeError among them
            self.undecodable = ChainBreak(
                self.stream_id, row["stream_version"], f"stored event does not decode: {error}"
            )


def _finish(
    report: ChainReport,
    stream: _Stream,
    heads: dict[str, tuple[int, bytes]],
    on_events: Callable[[int], None] | None,
) -> None:
    """Check a stream the cursor has passed (none before the first row)."""
    if not stream.rows:
        return
    head = heads.pop(stream.stream_id, None)
    report.streams += 1
    report.events += stream.rows
    found = find_break(stream.stream_id, stream.events)
    if found is None:
        found = stream.undecodable or _check_head(stream.stream_id, stream.events[-1], head)
    if found is not None:
        report.breaks.append(found)
    if on_events is not None:
        on_events(stream.rows)


def _check_head(
    stream_id: str, last: RecordedEvent, head: tuple[int, bytes] | None
) -> ChainBreak | None:
    if head is None:
        return ChainBreak(stream_id, last.stream_version, "stream has events but no head row")
    version, last_hash = head
    if version != last.stream_version:
        return ChainBreak(stream_id, last.stream_version + 1, f"head says version {version}")
    if last_hash != last.hash:
        return ChainBreak(stream_id, version, "head hash does not match the last event")
    return None

