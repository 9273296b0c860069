"""Snapshots keep the newest fold of a stream; upcasters reshape old events on every read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import orjson
import pytest

from eventstore import (
    NO_STREAM,
    EventStore,
    InvalidEvent,
    NewEvent,
    RecordedEvent,
    Subscription,
    Upcasters,
    verify_chains,
)
from eventstore._db import Connection

# --- snapshots ---------------------------------------------------------------------------


async def test_the_latest_snapshot_is_loaded(store: EventStore) -> None:
    await store.save_snapshot("account-1", 3, {"balance_minor": 30})
    await store.save_snapshot("account-1", 5, {"balance_minor": 50})

    snapshot = await store.load_snapshot("account-1")

    assert snapshot is not None
    assert (snapshot.stream_id, snapshot.stream_version) == ("account-1", 5)
    assert snapshot.state == {"balance_minor": 50}
    assert snapshot.schema_version == 1


async def test_an_older_snapshot_does_not_replace_a_newer_one(store: EventStore) -> None:
    await store.save_snapshot("account-1", 5, {"balance_minor": 50})

    await store.save_snapshot("account-1", 3, {"balance_minor": 30})

    snapshot = await store.load_snapshot("account-1")
    assert snapshot is not None
    assert (snapshot.stream_version, snapshot.state) == (5, {"balance_minor": 50})


async def test_a_snapshot_of_another_schema_version_is_not_loaded(store: EventStore) -> None:
    await store.save_snapshot("account-1", 5, {"balance_minor": 50}, schema_version=1)

    assert await store.load_snapshot("account-1", schema_version=2) is None


async def test_a_stream_without_a_snapshot_loads_none(store: EventStore) -> None:
    assert await store.load_snapshot("account-404") is None


# --- upcasting ---------------------------------------------------------------------------
# Deposited v1 {"amount": n} -> v2 {"amount_minor": n} -> v3 {"amount_minor": n, "currency"}.

NEWEST = {"amount_minor": 7, "currency": "USD"}


def v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {"amount_minor": data["amount"]}


def v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "currency": "USD"}


@pytest.fixture
async def upcasting_store(pool: asyncpg.Pool, schema: str) -> EventStore:
    """A store whose reads turn Deposited v1 and v2 into v3, holding one event of each shape."""
    upcasters = Upcasters()
    upcasters.register("Deposited", 1, v1_to_v2)
    upcasters.register("Deposited", 2, v2_to_v3)
    created = EventStore(pool, schema, upcasters=upcasters)
    await created.migrate()
    await created.append("account-1", [NewEvent("Deposited", {"amount": 7})], NO_STREAM)
    await created.append(
        "account-1", [NewEvent("Deposited", {"amount_minor": 7}, {"schema_version": 2})], 1
    )
    await created.append("account-1", [NewEvent("Deposited", NEWEST, {"schema_version": 3})], 2)
    await created.append("transfer-1", [NewEvent("TransferRequested", {"amount": 7})], NO_STREAM)
    return created


def shapes(events: Sequence[RecordedEvent]) -> list[tuple[str, dict[str, Any], int]]:
    return [
        (event.event_type, event.data, event.metadata.get("schema_version", 1)) for event in events
    ]


NEWEST_SHAPES = [("Deposited", NEWEST, 3)] * 3


async def test_read_stream_returns_the_newest_shape(upcasting_store: EventStore) -> None:
    assert shapes(await upcasting_store.read_stream("account-1")) == NEWEST_SHAPES


async def test_read_all_returns_the_newest_shape(upcasting_store: EventStore) -> None:
    events = await upcasting_store.read_all()

    assert shapes(events) == [*NEWEST_SHAPES, ("TransferRequested", {"amount": 7}, 1)]


async def test_read_category_returns_the_newest_shape(upcasting_store: EventStore) -> None:
    assert shapes(await upcasting_store.read_category("account")) == NEWEST_SHAPES


async def test_a_subscription_receives_the_newest_shape(upcasting_store: EventStore) -> None:
    delivered: list[RecordedEvent] = []

    async def handle(_: Connection, events: Sequence[RecordedEvent]) -> None:
        delivered.extend(events)

    await Subscription(upcasting_store, "upcast", handle, category="account").catch_up()

    assert shapes(delivered) == NEWEST_SHAPES


async def test_an_event_whose_schema_version_reads_cannot_take_is_refused_at_append(
    upcasting_store: EventStore,
) -> None:
    # A schema version that is not a positive integer would stop every read at the event.
    with pytest.raises(InvalidEvent, match="schema_version"):
        await upcasting_store.append(
            "account-1", [NewEvent("Deposited", NEWEST, {"schema_version": "3"})], 3
        )

    assert shapes(await upcasting_store.read_category("account")) == NEWEST_SHAPES


async def test_upcasting_leaves_the_stored_rows_unchanged(upcasting_store: EventStore) -> None:
    await upcasting_store.read_all()

    rows = await upcasting_store.pool.fetch(
        f"select data, metadata from {upcasting_store.schema}.events"
        " where stream_id = 'account-1' order by stream_version"
    )

    assert [(orjson.loads(row["data"]), orjson.loads(row["metadata"])) for row in rows] == [
        ({"amount": 7}, {}),
        ({"amount_minor": 7}, {"schema_version": 2}),
        (NEWEST, {"schema_version": 3}),
    ]
    assert (await verify_chains(upcasting_store)).is_intact
