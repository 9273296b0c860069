"""The settled horizon lists read models by: a transaction id below which everything that
committed before the call lies, and nothing that can still commit."""

from __future__ import annotations

import asyncio

from eventstore import NO_STREAM, EventStore, NewEvent


async def _tx_id_of(store: EventStore, stream_id: str) -> int:
    tx_id: int = await store.pool.fetchval(
        f"select tx_id from {store.schema}.events where stream_id = $1", stream_id
    )
    return tx_id


async def test_the_horizon_is_above_every_transaction_committed_before_the_call(
    store: EventStore,
) -> None:
    await store.append("account-a", [NewEvent("Noted", {})], NO_STREAM)

    horizon = await store.settled_horizon(patience_s=0)

    assert await _tx_id_of(store, "account-a") < horizon


async def test_the_horizon_waits_for_an_older_transaction_in_flight_when_called(
    store: EventStore,
) -> None:
    async with store.unit_of_work() as older:
        await older.append("account-b", [NewEvent("Noted", {})], NO_STREAM)  # takes its id
        await store.append("account-c", [NewEvent("Noted", {})], NO_STREAM)  # younger, done
        looking = asyncio.create_task(store.settled_horizon(patience_s=30))
        await asyncio.sleep(0.2)
        assert not looking.done()

    horizon = await looking
    assert await _tx_id_of(store, "account-b") < await _tx_id_of(store, "account-c") < horizon


async def test_past_its_patience_the_horizon_stays_below_a_transaction_still_open(
    store: EventStore,
) -> None:
    async with store.pool.acquire() as connection, connection.transaction():
        open_tx_id = await connection.fetchval("select pg_current_xact_id()")
        await store.append("account-d", [NewEvent("Noted", {})], NO_STREAM)

        horizon = await store.settled_horizon(patience_s=0.1)

    assert horizon <= open_tx_id < await _tx_id_of(store, "account-d")
