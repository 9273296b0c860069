"""The event store: append with optimistic concurrency, units of work, reads."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final

import asyncpg

from eventstore import reads
from eventstore._db import Connection
from eventstore._translate import translated_errors
from eventstore.announcer import Announcer
from eventstore.appends import (
    APPEND_SQL,
    Append,
    append_arguments,
    append_on,
    append_result,
    check_append,
    named_conflict,
)
from eventstore.errors import ConcurrencyError, StreamNotFound
from eventstore.events import (
    ANY,
    START,
    AppendResult,
    Direction,
    NewEvent,
    Position,
    RecordedEvent,
)
from eventstore.migrations import check_schema_name, migrate
from eventstore.snapshots import Snapshot, load_snapshot, save_snapshot
from eventstore.upcasting import Upcasters

if TYPE_CHECKING:
    from eventstore.projections import Projection

_log = logging.getLogger(__name__)

MAX_READ_EVENTS: Final = 10_000
"""The most events one read may return."""



class EventStore:
    """One service's event log in its own PostgreSQL schema.

    Inline projections run inside every append's transaction, so what they write is exactly
    as current as the events.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        schema: str,
        *,
        upcasters: Upcasters | None = None,
        inline_projections: Sequence[Projection] = (),
    ) -> None:
        self.pool = pool
        self.schema = check_schema_name(schema)
        self.upcasters = upcasters or Upcasters()
        self.inline_projections = tuple(inline_projections)
        self.announcer = Announcer(pool, f"{self.schema}_events")

    @classmethod
    async def open(
        cls,
        dsn: str,
        schema: str,
        *,
        pool_size: int = 10,
        upcasters: Upcasters | None = None,
        inline_projections: Sequence[Projection] = (),
    ) -> EventStore:
        """Connect a pool to `dsn`, migrate `schema`, and return the store that owns the pool."""
        with translated_errors():
            pool = await asyncpg.create_pool(
                dsn, min_size=1, max_size=pool_size, reset=_keep_session_state
            )
        store = cls(pool, schema, upcasters=upcasters, inline_projections=inline_projections)
        try:
            await store.migrate()
            for projection in store.inline_projections:
                await projection.ensure_table(store)
        except BaseException:
            await pool.close()
            raise
        return store

    async def close(self, *, grace_s: float | None = None) -> None:
        """Stop announcing and close the pool: wait for connections in use to be released,
        for at most `grace_s` (no bound if None), then terminate those still in use."""
        await self.announcer.close()
        try:
            async with asyncio.timeout(grace_s):
                await self.pool.close()
        except TimeoutError:
            _log.warning("%s: connections still in use after %.1fs; terminated",
                         self.schema, grace_s)  # fmt: skip
            self.pool.terminate()

    async def migrate(self) -> None:
        """Bring the schema up to date; safe to call from many processes at once."""
        with translated_errors():
            async with self.pool.acquire() as connection:
                await migrate(connection, self.schema)

    async def append(
        self, stream_id: str, events: Sequence[NewEvent], expected_version: int = ANY
    ) -> AppendResult:
        """Append `events` to `stream_id` if it is at `expected_version`.

        Raises ConcurrencyError on a version mismatch, DuplicateEventError when only some of
        the event ids are stored already, InvalidEvent on malformed input. Appending the same
        event ids again returns the first result with `is_duplicate=True`.
        """
        if self.inline_projections:
            async with self.unit_of_work() as unit:
                return await unit.append(stream_id, events, expected_version)
        with translated_errors(stream_id, expected_version):
            async with self.pool.acquire() as connection:
                result = await append_on(
                    connection, self.schema, stream_id, events, expected_version
                )
        self.announcer.announce()
        return result

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[UnitOfWork]:
        """A transaction in which several streams are appended atomically, or none is."""
        with translated_errors():
            async with self.pool.acquire() as connection, connection.transaction():
                yield UnitOfWork(self, connection)
        self.announcer.announce()

    async def read_stream(
        self,
        stream_id: str,
        *,
        from_version: int | None = None,
        direction: Direction = Direction.FORWARD,
        limit: int = MAX_READ_EVENTS,
    ) -> list[RecordedEvent]:
        """Events of one stream; raises StreamNotFound when it has none.

        Forward starts at `from_version` (default 1); backward at `from_version` (default the
        last event) and walks down.
        """
        _check_limit(limit)
        if from_version is None:
            from_version = 1 if direction is Direction.FORWARD else 2**62
        with translated_errors(stream_id):
            events = await self._fetch_stream(stream_id, from_version, direction, limit)
            if not events:
                if await self.stream_version(stream_id) == 0:
                    raise StreamNotFound(stream_id)
                # The stream may have been committed between the two statements (each sees
                # what was committed when it began): read what the second one saw, not [].
                events = await self._fetch_stream(stream_id, from_version, direction, limit)
        return events

    async def _fetch_stream(
        self, stream_id: str, from_version: int, direction: Direction, limit: int
    ) -> list[RecordedEvent]:
        return await reads.fetch_stream(
            self.pool, self.schema, stream_id, from_version=from_version,
            direction=direction, limit=limit, upcasters=self.upcasters,
        )  # fmt: skip

    async def stream_version(self, stream_id: str) -> int:
        """The stream's current version; 0 when it does not exist."""
        with translated_errors(stream_id):
            version = await self.pool.fetchval(
                f"select version from {self.schema}.streams where stream_id = $1", stream_id
            )
        return int(version or 0)

    async def read_all(
        self, after: Position = START, *, limit: int = MAX_READ_EVENTS
    ) -> list[RecordedEvent]:
        """Settled events after `after` in commit order; keep the last one's position."""
        return await self.read_category(None, after, limit=limit)

    async def read_category(
        self, category: str | None, after: Position = START, *, limit: int = MAX_READ_EVENTS
    ) -> list[RecordedEvent]:
        """Like read_all, restricted to streams named `<category>-...` (all when None)."""
        _check_limit(limit)
        with translated_errors():
            return await reads.fetch_in_commit_order(
                self.pool, self.schema, after=after, limit=limit, category=category,
                upcasters=self.upcasters,
            )

    async def settled_horizon(self, *, patience_s: float = 1.0) -> int:
        """A transaction id below which nothing can still commit: read models list below it
        in commit order. Everything committed before the call lies below it too, unless a
        transaction older than the call stays open past `patience_s` (`reads.settled_horizon`)."""
        with translated_errors():
            return await reads.settled_horizon(self.pool, patience_s)

    async def place_of(self, global_position: int) -> Position | None:
        """The place in commit order of the event at `global_position` (None: no such event)."""
        with translated_errors():
            return await reads.place_of(self.pool, self.schema, global_position)

    async def save_snapshot(
        self, stream_id: str, stream_version: int, state: dict[str, Any], schema_version: int = 1
    ) -> None:
        """Keep `state` (folded up to `stream_version`) unless a newer snapshot is stored."""
        with translated_errors(stream_id):
            await save_snapshot(
                self.pool, self.schema, stream_id, stream_version, state, schema_version
            )

    async def load_snapshot(self, stream_id: str, schema_version: int = 1) -> Snapshot | None:
        """The stream's latest snapshot of `schema_version`, or None."""
        with translated_errors(stream_id):
            return await load_snapshot(self.pool, self.schema, stream_id, schema_version)


class UnitOfWork:
    """An open transaction of the store; `connection` lets a caller write its own rows in it."""

    def __init__(self, store: EventStore, connection: Connection) -> None:
        self.store = store
        self.connection = connection

    async def append(
        self, stream_id: str, events: Sequence[NewEvent], expected_version: int = ANY
    ) -> AppendResult:
        """Append within this transaction; same contract as EventStore.append."""
        result = await append_on(
            self.connection, self.store.schema, stream_id, events, expected_version
        )
        if not result.is_duplicate:
            await self._project(result.events)
        return result

    async def append_many(self, appends: Sequence[Append]) -> list[AppendResult]:
        """Several streams' appends in one round trip (pipelined), in this transaction; each
        has EventStore.append's contract. The first that fails raises, and the transaction
        is then aborted: the caller rolls it back (a ConcurrencyError names its stream)."""
        for append in appends:
            check_append(append.stream_id, append.events, append.expected_version)
        if not appends:
            return []
        arguments = [
            append_arguments(append.stream_id, append.events, append.expected_version)
            for append in appends
        ]
        try:
            with translated_errors():
                rows = await self.connection.fetchmany(APPEND_SQL.format(schema=self.store.schema),
                                                       arguments)  # fmt: skip
        except ConcurrencyError as error:
            raise named_conflict(error, appends) from error.__cause__
        results, start = [], 0
        for append in appends:
            end = start + len(append.events)
            results.append(await append_result(self.connection, self.store.schema, append.stream_id,
                                            append.events, rows[start:end]))  # fmt: skip
            start = end
        await self._project([e for result in results if not result.is_duplicate
                             for e in result.events])  # fmt: skip
        return results

    async def _project(self, events: Sequence[RecordedEvent]) -> None:
        """Fold the appended events into every inline projection, in this transaction."""
        if not events:
            return
        recorded = [self.store.upcasters.upcast(event) for event in events]
        for projection in self.store.inline_projections:
            table = f"{self.store.schema}.{projection.table}"
            await projection.apply_batch(self.connection, table, recorded)


async def _keep_session_state(_: object) -> None:
    """Pool connections are handed back as they are: the store leaves no session state
    behind (transaction-scoped locks only, listeners removed by their owners), and asyncpg's
    default reset would cost a round trip on every release."""


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_READ_EVENTS:
        raise ValueError(f"limit must be between 1 and {MAX_READ_EVENTS}")
