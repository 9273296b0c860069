"""Projections: read models folded from events, kept inline or by a subscription, rebuildable.

A rebuild replays the store into a shadow table without stopping the API, then, in one short
transaction that holds writers off, catches the shadow up and either swaps it in or compares
it with the live table row by row (`verify`). See docs/projection-rebuild.md.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from eventstore import subscriptions
from eventstore._db import Connection
from eventstore._translate import translated_errors
from eventstore.errors import EventStoreError
from eventstore.events import START, Position, RecordedEvent
from eventstore.replay import read_ahead_connection, replay_into
from eventstore.store import EventStore

_log = logging.getLogger(__name__)

_VERSION_NOTE: Final = "ledger projection, version "
"""The table comment that records the projection version which made a read model."""

LOCK_TIMEOUT_MS: Final = 10_000
"""How long the final catch-up waits for the live table's lock before giving up."""
_REBUILD_CONNECTIONS: Final = 3
"""What `ensure_table` holds while it rebuilds: its lock's, the replay's and the read-ahead's."""
_MAX_NAME_BYTES: Final = 63
"""PostgreSQL's longest identifier: a longer one is cut to this, with only a notice."""
_SHADOW_SUFFIX: Final = "__shadow"
_RETIRED_SUFFIX: Final = "__retired"

Progress = Callable[[int], None]


class Projection(ABC):
    """A read model: one table in the store's schema, changed only by `apply`.

    `create_sql` must leave index and constraint names to PostgreSQL, so that a shadow table
    can be created beside the live one.
    """

    name: str
    table: str
    key_columns: tuple[str, ...]
    version: int = 1
    """The shape of the table `create_sql` makes. Raise it with the shape: a live table made
    by an older version is rebuilt when the store opens (docs/read-model-versions.md)."""

    @abstractmethod
    def create_sql(self, table: str) -> str:
        """DDL that creates the read model as `table` (schema-qualified)."""

    @abstractmethod
    async def apply(self, connection: Connection, table: str, event: RecordedEvent) -> None:
        """Fold one event into `table`; ignore event types it does not follow."""

    async def apply_batch(
        self, connection: Connection, table: str, events: Sequence[RecordedEvent]
    ) -> None:
        """Fold a page of events, in commit order, into `table`, as `apply` would one by one.

        Rebuilds and async projections hand over pages of thousands of events; this default
        applies them one at a time (a round trip each). A projection that folds a page in
        Python and writes it in a few statements rebuilds many times faster.
        """
        for event in events:
            await self.apply(connection, table, event)

    async def ensure_table(self, store: EventStore) -> None:
        """Create the live table if it does not exist yet, and rebuild it if an older version
        of this projection made it. One instance does either while the others wait.

        An inline projection must be among `store.inline_projections`: a rebuild replays an
        inline projection's table up to the store's head, an async one's up to its
        subscription's checkpoint."""
        table = f"{store.schema}.{self.table}"
        with translated_errors():
            async with store.pool.acquire() as connection, connection.transaction():
                await subscriptions.lock(connection, store.schema, f"projection-ddl:{self.name}")
                if await connection.fetchval("select to_regclass($1)", table) is None:
                    await connection.execute(self.create_sql(table))
                    await _mark_version(connection, self, table)
                    return
                made_by = await _version_of(connection, table)
                if made_by < self.version:
                    if store.pool.get_max_size() < _REBUILD_CONNECTIONS:
                        raise EventStoreError(
                            f"{table} must be rebuilt (version {made_by}, this is"
                            f" {self.version}), which takes {_REBUILD_CONNECTIONS} pooled"
                            f" connections; the pool has {store.pool.get_max_size()}"
                        )
                    _log.warning("rebuilding %s: its table is of version %d, this is %d",
                                 table, made_by, self.version)  # fmt: skip
                    await rebuild(store, self)


def projection_subscription(
    store: EventStore, projection: Projection, **options: Any
) -> subscriptions.Subscription:
    """An async projection: a subscription named after the projection that applies each event.

    It follows every category: a projection picks its events in `apply`, and a rebuild,
    which replays every event, must fold the same ones (found in review)."""
    if options.get("category") is not None:
        raise ValueError(f"projection {projection.name}: a projection follows every category"
                         " and picks its events in apply, as its rebuild does")  # fmt: skip

    async def handle(connection: Connection, events: Sequence[RecordedEvent]) -> None:
        await projection.apply_batch(connection, f"{store.schema}.{projection.table}", events)

    return subscriptions.Subscription(store, projection.name, handle, **options)


@dataclass(frozen=True, slots=True)
class RowDifference:
    """A row that differs between the live table and its rebuild (None: the row is missing)."""

    key: dict[str, Any]
    live: dict[str, Any] | None
    rebuilt: dict[str, Any] | None


@dataclass(slots=True)
class RebuildReport:
    """What a rebuild did: events replayed, whether it swapped, and every difference found."""

    projection: str
    events: int = 0
    elapsed_s: float = 0.0
    swapped: bool = False
    differences: list[RowDifference] = field(default_factory=list)

    @property
    def events_per_s(self) -> float:
        """Replay throughput."""
        return self.events / self.elapsed_s if self.elapsed_s > 0 else 0.0


async def replay_estimate(store: EventStore, projection: Projection) -> int:
    """About how many events a rebuild of `projection` would replay now: every event for an
    inline projection, up to its checkpoint for an async one (appends go on meanwhile)."""
    with translated_errors():
        async with store.pool.acquire() as connection:
            if projection in store.inline_projections:
                up_to = await _settled_head(connection, store)
            else:
                up_to = await _checkpoint(connection, store, projection)
            count = await connection.fetchval(
                f"select count(*) from {store.schema}.events"
                " where (tx_id, global_position) <= ($1::xid8, $2::bigint)",
                *up_to,
            )
    return int(count)


async def rebuild(
    store: EventStore,
    projection: Projection,
    *,
    verify: bool = False,
    progress: Progress | None = None,
) -> RebuildReport:
    """Replay every event into a shadow table, then swap it in or, with `verify`, compare it.

    Raises EventStoreError when the table's name leaves no room for the shadow's suffix.
    """
    _check_room_for_suffixes(projection)
    started = time.perf_counter()
    report = RebuildReport(projection.name)
    live = f"{store.schema}.{projection.table}"
    shadow = f"{store.schema}.{projection.table}{_SHADOW_SUFFIX}"
    is_inline = projection in store.inline_projections
    with translated_errors():
        async with store.pool.acquire() as connection, _rebuilding(connection, store, projection):
            await connection.execute(f"drop table if exists {shadow}")
            await connection.execute(projection.create_sql(shadow))
            await _mark_version(connection, projection, shadow)
            try:
                position = await _replay_unlocked(
                    connection, store, projection, shadow, report, progress, is_inline
                )
                async with connection.transaction():
                    await connection.execute(f"set local lock_timeout = '{LOCK_TIMEOUT_MS}ms'")
                    position = await _hold_writers_and_catch_up(
                        connection, store, projection, shadow, position, verify, report
                    )
                    if verify:
                        report.differences = await _differences(
                            connection, projection, live, shadow
                        )
                    else:
                        await _swap(
                            connection, store, projection, live, shadow, position, is_inline
                        )
                        report.swapped = True
            finally:
                if not report.swapped:
                    await connection.execute(f"drop table if exists {shadow}")
    report.elapsed_s = time.perf_counter() - started
    return report


async def _mark_version(connection: Connection, projection: Projection, table: str) -> None:
    """Note on `table` which version of `projection` made it (a comment survives renames)."""
    await connection.execute(f"comment on table {table} is '{_VERSION_NOTE}{projection.version}'")


async def _version_of(connection: Connection, table: str) -> int:
    """The version of the projection that made `table`: 1 for a table made before versions
    were noted, or with a note this code does not read."""
    note = await connection.fetchval("select obj_description($1::regclass, 'pg_class')", table)
    if note is None or not note.startswith(_VERSION_NOTE):
        return 1
    try:
        return int(note.removeprefix(_VERSION_NOTE))
    except ValueError:
        return 1


def _check_room_for_suffixes(projection: Projection) -> None:
    """Refuse a table whose shadow or retired name PostgreSQL would cut: cut to 63 bytes, the
    shadow's name could be the live table's own, which the rebuild begins by dropping."""
    for suffix in (_SHADOW_SUFFIX, _RETIRED_SUFFIX):
        if len((projection.table + suffix).encode()) > _MAX_NAME_BYTES:
            raise EventStoreError(
                f"projection {projection.name}: table name {projection.table!r} is too long to"
                f" rebuild; with {suffix!r} it must fit in {_MAX_NAME_BYTES} bytes"
            )


async def _replay_unlocked(
    connection: Connection,
    store: EventStore,
    projection: Projection,
    shadow: str,
    report: RebuildReport,
    progress: Progress | None,
    is_inline: bool,
) -> Position:
    """Replay without locks up to a bound (else a steady stream of appends never ends it),
    then once more to a fresh bound, so the locked catch-up only sees the last moments."""

    def replayed(count: int) -> None:
        report.events += count
        if progress is not None:
            progress(count)

    async with read_ahead_connection(store) as reader:
        if not is_inline:
            bound = await _checkpoint(connection, store, projection)
            return await replay_into(connection, store, projection, shadow, START, bound,
                                     replayed, reader=reader)  # fmt: skip
        position = START
        for _ in range(2):
            bound = await _settled_head(connection, store)
            position = await replay_into(connection, store, projection, shadow, position, bound,
                                         replayed, reader=reader)  # fmt: skip
        return position


@asynccontextmanager
async def _rebuilding(
    connection: Connection, store: EventStore, projection: Projection
) -> AsyncIterator[None]:
    """Hold the projection's rebuild lock: two rebuilds would drop each other's shadow."""
    key = f"rebuild:{projection.name}"
    if not await connection.fetchval(
        "select pg_try_advisory_lock(hashtext($1), hashtext($2))", store.schema, key
    ):
        raise EventStoreError(f"a rebuild of {projection.name} is already running")
    try:
        yield
    finally:
        # Session-level lock, and the pool does not reset sessions: unlock explicitly.
        await connection.execute(
            "select pg_advisory_unlock(hashtext($1), hashtext($2))", store.schema, key
        )


async def _hold_writers_and_catch_up(
    connection: Connection,
    store: EventStore,
    projection: Projection,
    shadow: str,
    position: Position,
    verify: bool,
    report: RebuildReport,
) -> Position:
    """Stop the live table from moving, then bring the shadow to exactly where the live is."""

    def replayed(count: int) -> None:
        report.events += count

    if projection in store.inline_projections:
        # Writers that already hold the table finish first; new ones wait for this transaction.
        mode = "share" if verify else "access exclusive"
        await connection.execute(f"lock table {store.schema}.{projection.table} in {mode} mode")
        # Every committed event is now in the live table: read by visibility, not by xmin.
        return await replay_into(connection, store, projection, shadow, position, None,
                                 replayed, settled_only=False)  # fmt: skip
    await subscriptions.lock(connection, store.schema, projection.name)
    live_at = await _checkpoint(connection, store, projection)
    return await replay_into(connection, store, projection, shadow, position, live_at, replayed)


async def _settled_head(connection: Connection, store: EventStore) -> Position:
    """The last event in commit order that is settled now (START when there is none)."""
    row = await connection.fetchrow(
        f"select tx_id, global_position from {store.schema}.events"
        " where tx_id < pg_snapshot_xmin(pg_current_snapshot())"
        " order by tx_id desc, global_position desc limit 1"
    )
    return START if row is None else Position(row[0], row[1])


async def _checkpoint(
    connection: Connection, store: EventStore, projection: Projection
) -> Position:
    return await subscriptions.load_checkpoint(connection, store.schema, projection.name)


async def _swap(
    connection: Connection,
    store: EventStore,
    projection: Projection,
    live: str,
    shadow: str,
    position: Position,
    is_inline: bool,
) -> None:
    retired = f"{projection.table}{_RETIRED_SUFFIX}"
    await _keep_owner_and_grants(connection, live, shadow)
    await connection.execute(f"alter table if exists {live} rename to {retired}")
    await connection.execute(f"alter table {shadow} rename to {projection.table}")
    await connection.execute(f"drop table if exists {store.schema}.{retired}")
    if not is_inline:
        await subscriptions.save_checkpoint(connection, store.schema, projection.name, position)


async def _keep_owner_and_grants(connection: Connection, live: str, shadow: str) -> None:
    """Give the shadow the live table's grants and owner, which belong to the table, not to
    its name: the services' roles keep reading and writing the table swapped in."""
    grants = await connection.fetch(
        "select format('grant %s on table %s to %s%s', a.privilege_type, $2::text,"
        "   case when a.grantee = 0 then 'public' else a.grantee::regrole::text end,"
        "   case when a.is_grantable then ' with grant option' else '' end)"
        "  from pg_class c cross join lateral aclexplode(c.relacl) as a"
        " where c.oid = to_regclass($1) and a.grantee <> c.relowner",
        live,
        shadow,
    )
    # Granted while this role owns the shadow; the owner goes last.
    for (grant,) in grants:
        await connection.execute(grant)
    owner = await connection.fetchval(
        "select l.relowner::regrole::text from pg_class l, pg_class s"
        " where l.oid = to_regclass($1) and s.oid = $2::regclass and l.relowner <> s.relowner",
        live,
        shadow,
    )
    if owner is not None:
        await connection.execute(f"alter table {shadow} owner to {owner}")


async def _differences(
    connection: Connection, projection: Projection, live: str, shadow: str
) -> list[RowDifference]:
    keys = ", ".join(projection.key_columns)
    rows = await connection.fetch(
        f"select to_jsonb(l) as live, to_jsonb(r) as rebuilt from {live} l"
        f" full join {shadow} r using ({keys})"
        " where to_jsonb(l) is distinct from to_jsonb(r)"
        f" order by coalesce(to_jsonb(l), to_jsonb(r))"
    )
    differences = []
    for row in rows:
        live_row = orjson.loads(row["live"]) if row["live"] is not None else None
        rebuilt_row = orjson.loads(row["rebuilt"]) if row["rebuilt"] is not None else None
        either = live_row if live_row is not None else rebuilt_row
        assert either is not None, "a full join row has at least one side"
        key = {column: either[column] for column in projection.key_columns}
        differences.append(RowDifference(key, live_row, rebuilt_row))
    return differences
