"""Migrations: idempotent, safe to run at once from many places, refusing a changed history."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from eventstore import EventStore, MigrationError
from eventstore.migrations import load_migrations, migrate


async def recorded_versions(store: EventStore) -> list[int]:
    rows = await store.pool.fetch(
        f"select version from {store.schema}.schema_migrations order by version"
    )
    return [row["version"] for row in rows]


async def test_migrating_again_runs_nothing(store: EventStore) -> None:
    async with store.pool.acquire() as connection:
        ran_again = await migrate(connection, store.schema)

    assert ran_again == []
    assert await recorded_versions(store) == [m.version for m in load_migrations()]


async def test_a_fresh_schema_records_every_version(pool: asyncpg.Pool, schema: str) -> None:
    async with pool.acquire() as connection:
        ran = await migrate(connection, schema)

    assert [m.version for m in ran] == [m.version for m in load_migrations()]
    assert await recorded_versions(EventStore(pool, schema)) == [m.version for m in ran]


async def test_concurrent_migrations_of_a_fresh_schema_all_succeed(
    pool: asyncpg.Pool, schema: str
) -> None:
    stores = [EventStore(pool, schema) for _ in range(8)]

    await asyncio.gather(*(store.migrate() for store in stores))

    assert await recorded_versions(stores[0]) == [m.version for m in load_migrations()]
    assert await stores[0].read_all() == []


@pytest.mark.parametrize("name", ["bad-name", "x;drop", "Upper", "1starts_with_digit", ""])
async def test_an_unsafe_schema_name_is_refused(pool: asyncpg.Pool, name: str) -> None:
    with pytest.raises(MigrationError):
        EventStore(pool, name)
    async with pool.acquire() as connection:
        with pytest.raises(MigrationError):
            await migrate(connection, name)


async def test_a_migration_changed_after_it_ran_is_refused(store: EventStore) -> None:
    await store.pool.execute(
        f"update {store.schema}.schema_migrations set checksum = 'edited' where version = 1"
    )

    with pytest.raises(MigrationError):
        await store.migrate()
