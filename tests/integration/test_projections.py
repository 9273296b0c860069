"""Projections: inline ones move with the append, async ones with a subscription; both rebuild."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from eventstore import (
    NO_STREAM,
    ConcurrencyError,
    EventStore,
    EventStoreError,
    NewEvent,
    Projection,
    RecordedEvent,
    RowDifference,
    projection_subscription,
    rebuild,
)
from eventstore._db import Connection
from tests.integration.settling import wait_settled

GUARD_S = 30.0
"""How long a concurrent test may take before it is judged hung."""


class Balances(Projection):
    """One row per account: its balance and the version of the last event that moved it."""

    name = "balances"
    table = "balances"
    key_columns = ("stream_id",)

    def create_sql(self, table: str) -> str:
        return (
            f"create table {table} (stream_id text primary key,"
            " balance_minor bigint not null, version bigint not null)"
        )

    async def apply(self, connection: Connection, table: str, event: RecordedEvent) -> None:
        delta = _delta(event)
        if delta is None:
            return
        await connection.execute(
            f"insert into {table} as b (stream_id, balance_minor, version) values ($1, $2, $3)"
            " on conflict (stream_id) do update set"
            " balance_minor = b.balance_minor + excluded.balance_minor, version = excluded.version",
            event.stream_id,
            delta,
            event.stream_version,
        )


def _delta(event: RecordedEvent) -> int | None:
    if event.event_type == "Deposited":
        return int(event.data["amount_minor"])
    if event.event_type == "Withdrawn":
        return -int(event.data["amount_minor"])
    return None


def fold(events: list[RecordedEvent]) -> dict[str, dict[str, Any]]:
    """The balances the projection must hold: the fold of the events, in plain Python."""
    rows: dict[str, dict[str, Any]] = {}
    for event in events:
        delta = _delta(event)
        if delta is None:
            continue
        row = rows.setdefault(
            event.stream_id, {"stream_id": event.stream_id, "balance_minor": 0, "version": 0}
        )
        row["balance_minor"] += delta
        row["version"] = event.stream_version
    return rows


def deposited(amount_minor: int) -> NewEvent:
    return NewEvent("Deposited", {"amount_minor": amount_minor})


def withdrawn(amount_minor: int) -> NewEvent:
    return NewEvent("Withdrawn", {"amount_minor": amount_minor})


def opened() -> NewEvent:
    return NewEvent("AccountOpened", {"currency": "USD"})


async def table_rows(store: EventStore, projection: Projection) -> dict[str, dict[str, Any]]:
    rows = await store.pool.fetch(f"select * from {store.schema}.{projection.table}")
    return {row["stream_id"]: dict(row) for row in rows}


async def all_events(store: EventStore) -> list[RecordedEvent]:
    """Every settled event, paged: one read_all returns at most MAX_READ_EVENTS."""
    events = await store.read_all()
    while page := await store.read_all(events[-1].position) if events else []:
        events.extend(page)
    return events


async def append_history(store: EventStore, accounts: int = 3) -> None:
    for number in range(accounts):
        stream_id = f"account-{number}"
        await store.append(stream_id, [opened(), deposited(100 * (number + 1))], NO_STREAM)
        result = await store.append(stream_id, [withdrawn(30), deposited(5)], 2)
    await wait_settled(store, result.position)


@pytest.fixture
def balances() -> Balances:
    return Balances()


@pytest.fixture
async def inline_store(pool: asyncpg.Pool, schema: str, balances: Balances) -> EventStore:
    """A store that keeps `balances` inline, in every append's transaction."""
    created = EventStore(pool, schema, inline_projections=[balances])
    await created.migrate()
    await balances.ensure_table(created)
    return created


async def test_an_inline_projection_moves_with_the_append(
    inline_store: EventStore, balances: Balances
) -> None:
    await inline_store.append("account-1", [opened(), deposited(100)], NO_STREAM)

    await inline_store.append("account-1", [withdrawn(30)], 2)

    assert await table_rows(inline_store, balances) == {
        "account-1": {"stream_id": "account-1", "balance_minor": 70, "version": 3}
    }
    assert await table_rows(inline_store, balances) == fold(await all_events(inline_store))


async def test_a_failed_unit_of_work_leaves_the_projection_untouched(
    inline_store: EventStore, balances: Balances
) -> None:
    await inline_store.append("account-1", [deposited(100)], NO_STREAM)
    before = await table_rows(inline_store, balances)

    with pytest.raises(ConcurrencyError):
        async with inline_store.unit_of_work() as unit:
            await unit.append("account-2", [deposited(5)], NO_STREAM)
            await unit.append("account-1", [withdrawn(40)], NO_STREAM)

    assert await table_rows(inline_store, balances) == before


async def test_rebuild_swaps_in_a_table_equal_to_the_live_one(
    inline_store: EventStore, balances: Balances
) -> None:
    await append_history(inline_store)
    live = await table_rows(inline_store, balances)

    report = await rebuild(inline_store, balances)

    assert report.swapped
    assert report.events == 12
    assert report.differences == []
    assert await table_rows(inline_store, balances) == live
    assert live == fold(await all_events(inline_store))


@pytest.fixture
async def roles(pool: asyncpg.Pool) -> AsyncIterator[tuple[str, str]]:
    """Two roles of this test's own (an owner and a reader), dropped with their grants."""
    names = (f"test_owner_{uuid.uuid4().hex[:12]}", f"test_reader_{uuid.uuid4().hex[:12]}")
    for name in names:
        await pool.execute(f"create role {name}")
    yield names
    for name in names:
        await pool.execute(f"drop owned by {name}")
        await pool.execute(f"drop role {name}")


async def test_a_swapped_in_table_keeps_the_live_table_s_owner_and_grants(
    inline_store: EventStore, balances: Balances, roles: tuple[str, str]
) -> None:
    # Given a live table owned by a service's role, which lets another role read it,
    owner, reader = roles
    await append_history(inline_store)
    table = f"{inline_store.schema}.{balances.table}"
    await inline_store.pool.execute(f"alter table {table} owner to {owner}")
    await inline_store.pool.execute(f"grant select on {table} to {reader}")
    live = await table_rows(inline_store, balances)

    # when it is rebuilt (by another role: here the tests' superuser),
    await rebuild(inline_store, balances)

    # then the table swapped in has the same owner and grants.
    assert await inline_store.pool.fetchval(
        "select relowner::regrole::text from pg_class where oid = $1::regclass", table
    ) == owner
    privileges = (
        "select has_table_privilege($1, $2, 'select'), has_table_privilege($1, $2, 'insert')"
    )
    granted = await inline_store.pool.fetchrow(privileges, reader, table)
    assert granted is not None
    assert tuple(granted) == (True, False)
    assert await table_rows(inline_store, balances) == live


async def test_a_rebuilt_inline_table_keeps_following_appends(
    inline_store: EventStore, balances: Balances
) -> None:
    await append_history(inline_store, accounts=1)
    await rebuild(inline_store, balances)

    await inline_store.append("account-0", [deposited(1000)], 4)

    assert await table_rows(inline_store, balances) == fold(await all_events(inline_store))


async def test_verify_finds_no_difference_in_a_clean_table(
    inline_store: EventStore, balances: Balances
) -> None:
    await append_history(inline_store)

    report = await rebuild(inline_store, balances, verify=True)

    assert report.differences == []
    assert not report.swapped
    assert report.events == 12


async def test_verify_reports_each_row_changed_by_hand_without_swapping(
    inline_store: EventStore, balances: Balances
) -> None:
    # Given a live table edited by hand: one row changed, one deleted, one inserted,
    await append_history(inline_store)
    truth = await table_rows(inline_store, balances)
    table = f"{inline_store.schema}.{balances.table}"
    await inline_store.pool.execute(
        f"update {table} set balance_minor = 1 where stream_id = 'account-0'"
    )
    await inline_store.pool.execute(f"delete from {table} where stream_id = 'account-1'")
    await inline_store.pool.execute(f"insert into {table} values ('account-9', 42, 7)")
    edited = await table_rows(inline_store, balances)

    # when it is verified,
    report = await rebuild(inline_store, balances, verify=True)

    # then each edited row is reported with both sides, and the live table is left as it was.
    by_key = {difference.key["stream_id"]: difference for difference in report.differences}
    assert by_key == {
        "account-0": RowDifference(
            {"stream_id": "account-0"}, edited["account-0"], truth["account-0"]
        ),
        "account-1": RowDifference({"stream_id": "account-1"}, None, truth["account-1"]),
        "account-9": RowDifference({"stream_id": "account-9"}, edited["account-9"], None),
    }
    assert len(report.differences) == 3
    assert not report.swapped
    assert await table_rows(inline_store, balances) == edited
    shadow = f"{inline_store.schema}.{balances.table}__shadow"
    assert await inline_store.pool.fetchval("select to_regclass($1)", shadow) is None


async def test_a_rebuild_under_concurrent_writers_ends_equal_to_the_fold(
    inline_store: EventStore, balances: Balances
) -> None:
    # Given a history long enough to replay for a while, and eight writers appending without pause,
    await append_history(inline_store, accounts=8)
    for number in range(8):
        await inline_store.append(f"account-{number}", [deposited(1) for _ in range(100)])
    is_rebuilt = asyncio.Event()
    appended = [0] * 8

    async def write(number: int) -> None:
        while not is_rebuilt.is_set() or appended[number] < 5:
            await inline_store.append(f"account-{number}", [deposited(1)])
            appended[number] += 1

    async def rebuild_then_stop() -> None:
        try:
            await rebuild(inline_store, balances)
        finally:
            is_rebuilt.set()

    # when the projection is rebuilt among them,
    async def scenario() -> None:
        async with asyncio.TaskGroup() as group:
            for number in range(8):
                group.create_task(write(number))
            group.create_task(rebuild_then_stop())

    await asyncio.wait_for(scenario(), GUARD_S)

    # then the live table is the fold of every event, which a verify confirms.
    assert all(count >= 5 for count in appended)
    assert await table_rows(inline_store, balances) == fold(await all_events(inline_store))
    assert (await rebuild(inline_store, balances, verify=True)).differences == []


async def test_an_async_projection_catches_up_through_its_subscription(
    store: EventStore, balances: Balances
) -> None:
    await balances.ensure_table(store)
    await append_history(store)

    handled = await projection_subscription(store, balances, batch_size=5).catch_up()

    assert handled == 12
    assert await table_rows(store, balances) == fold(await all_events(store))


async def test_an_async_projection_rebuilds_and_verifies(
    store: EventStore, balances: Balances
) -> None:
    # Given an async projection that is up to date,
    await balances.ensure_table(store)
    await append_history(store)
    await projection_subscription(store, balances).catch_up()
    live = await table_rows(store, balances)

    # when it is rebuilt,
    report = await rebuild(store, balances)

    # then the new table equals the old, verifies clean, and the subscription resumes after it.
    assert report.swapped
    assert report.events == 12
    assert await table_rows(store, balances) == live
    assert (await rebuild(store, balances, verify=True)).differences == []
    await store.append("account-0", [deposited(1)], 4)
    assert await projection_subscription(store, balances).catch_up() == 1
    assert await table_rows(store, balances) == fold(await all_events(store))


async def test_an_async_rebuild_stops_where_its_subscription_stands(
    store: EventStore, balances: Balances
) -> None:
    # Events the subscription has not handled yet are left for it, not replayed twice.
    await balances.ensure_table(store)
    await append_history(store, accounts=1)
    await projection_subscription(store, balances).catch_up()
    await store.append("account-0", [deposited(1)], 4)

    report = await rebuild(store, balances)
    assert report.events == 4

    assert await projection_subscription(store, balances).catch_up() == 1
    assert await table_rows(store, balances) == fold(await all_events(store))


async def test_progress_counts_sum_to_the_events_replayed(
    store: EventStore, balances: Balances
) -> None:
    await balances.ensure_table(store)
    for number in range(5):
        await store.append(f"account-{number}", [deposited(n) for n in range(1, 501)])
    await projection_subscription(store, balances, batch_size=1000).catch_up()
    counts: list[int] = []

    report = await rebuild(store, balances, progress=counts.append)

    assert report.events == 2500
    assert sum(counts) == report.events
    assert len(counts) >= 2


class BalancesV2(Balances):
    """`Balances` with a new column: a read model whose shape changed."""

    version = 2

    def create_sql(self, table: str) -> str:
        return (
            f"create table {table} (stream_id text primary key, balance_minor bigint not null,"
            " version bigint not null, shape text not null default 'v2')"
        )


async def _columns(store: EventStore, table: str) -> list[str]:
    rows = await store.pool.fetch(
        "select column_name from information_schema.columns"
        " where table_schema = $1 and table_name = $2 order by ordinal_position",
        store.schema, table,
    )  # fmt: skip
    return [row[0] for row in rows]


async def test_a_table_made_by_an_older_version_is_rebuilt_when_the_store_opens(
    inline_store: EventStore, balances: Balances
) -> None:
    await append_history(inline_store)
    newer = BalancesV2()
    upgraded = EventStore(inline_store.pool, inline_store.schema, inline_projections=[newer])

    await newer.ensure_table(upgraded)

    assert await _columns(upgraded, "balances") == ["stream_id", "balance_minor", "version",
                                                     "shape"]  # fmt: skip
    rows = await table_rows(upgraded, newer)
    assert {key: {**row, "shape": "v2"} for key, row in fold(await all_events(upgraded)).items()
            } == rows  # fmt: skip
    await upgraded.append("account-0", [deposited(1)], 4)  # it follows appends as before
    assert (await table_rows(upgraded, newer))["account-0"]["balance_minor"] == 76


async def test_a_table_of_this_version_or_a_newer_one_is_left_as_it_is(
    inline_store: EventStore, balances: Balances
) -> None:
    newer = BalancesV2()
    upgraded = EventStore(inline_store.pool, inline_store.schema, inline_projections=[newer])
    await newer.ensure_table(upgraded)  # rebuilt: version 2 now
    stray = {"stream_id": "by-hand", "balance_minor": 1, "version": 1, "shape": "v2"}
    await inline_store.pool.execute(
        f"insert into {inline_store.schema}.balances values ('by-hand', 1, 1)"
    )

    await newer.ensure_table(upgraded)
    await balances.ensure_table(inline_store)  # a replica of the older version

    assert await table_rows(upgraded, newer) == {"by-hand": stray}


class LongNamedBalances(Balances):
    """Balances in a table whose name is as long as PostgreSQL allows (63 bytes)."""

    name = "long_named_balances"
    table = "balances_" + "x" * 54


@pytest.mark.parametrize("verify", [False, True])
async def test_a_rebuild_refuses_a_table_whose_shadow_name_postgresql_would_cut(
    pool: asyncpg.Pool, schema: str, verify: bool
) -> None:
    # Given an inline projection whose table name leaves no room for "__shadow" (PostgreSQL
    # cuts a longer name to 63 bytes, so the shadow's name would be the live table's),
    projection = LongNamedBalances()
    store = EventStore(pool, schema, inline_projections=[projection])
    await store.migrate()
    await projection.ensure_table(store)
    await append_history(store)
    live = await table_rows(store, projection)

    # when it is rebuilt or verified,
    with pytest.raises(EventStoreError, match="too long"):
        await rebuild(store, projection, verify=verify)

    # then the rebuild is refused before it touches anything: the live table is as it was.
    assert live == fold(await all_events(store))
    assert await table_rows(store, projection) == live


async def test_a_rebuild_at_open_with_too_small_a_pool_is_refused_not_hung(
    inline_store: EventStore, balances: Balances, pool: asyncpg.Pool, database_url: str
) -> None:
    await append_history(inline_store, accounts=1)
    newer = BalancesV2()
    small = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        upgraded = EventStore(small, inline_store.schema, inline_projections=[newer])
        with pytest.raises(EventStoreError, match="takes 3 pooled connections; the pool has 2"):
            await asyncio.wait_for(newer.ensure_table(upgraded), GUARD_S)
    finally:
        await small.close()


async def test_an_async_projection_may_not_follow_one_category_since_its_rebuild_follows_all(
    store: EventStore, balances: Balances
) -> None:
    with pytest.raises(ValueError, match="follows every category"):
        projection_subscription(store, balances, category="account")
