"""Integration fixtures: one pool for the session, a fresh schema for every test (with an
event store, or a saga log), and a NATS connection for every test that asks for one."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from nats.aio.client import Client

from eventstore import EventStore
from ledger.bus import connect
from saga.runs import SagaRunsProjection

POOL_CLOSE_GRACE_S = 30.0


@pytest.fixture(scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A connection pool to the session's PostgreSQL."""
    created = await asyncpg.create_pool(database_url, min_size=1, max_size=40)
    yield created
    try:  # a connection a failed test never gave back must not hang the session's end
        async with asyncio.timeout(POOL_CLOSE_GRACE_S):
            await created.close()
    except TimeoutError:
        created.terminate()
        raise AssertionError("a test kept a pooled connection to the end of the session") from None


@pytest.fixture
async def schema(pool: asyncpg.Pool) -> AsyncIterator[str]:
    """A schema name no other test uses, dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    yield name
    await pool.execute(f"drop schema if exists {name} cascade")


@pytest.fixture
async def store(pool: asyncpg.Pool, schema: str) -> EventStore:
    """A migrated event store in its own schema."""
    created = EventStore(pool, schema)
    await created.migrate()
    return created


@pytest.fixture
async def saga_store(pool: asyncpg.Pool, schema: str) -> EventStore:
    """A saga log with its `saga_runs` index, in a schema of its own."""
    store = EventStore(pool, schema, inline_projections=(SagaRunsProjection(),))
    await store.migrate()
    await SagaRunsProjection().ensure_table(store)
    return store


@pytest.fixture
async def nc(nats_url: str, request: pytest.FixtureRequest) -> AsyncIterator[Client]:
    """A connection to the session's NATS, named after the test module (modules that need
    streams in place or a longer-lived connection define their own)."""
    client = await connect([nats_url], f"test-{request.module.__name__.rsplit('.', 1)[-1]}")
    yield client
    await client.close()
