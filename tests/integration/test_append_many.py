"""append_many's one-statement path: appends at the versions their streams are at, each
stream once (docs/append-many.md). The other cases (retries, `ANY`, a stream twice, a
stream that moved on) are in test_append.py and go through append_events one by one."""

from __future__ import annotations

import pytest

from eventstore import NO_STREAM, Append, EventStore, NewEvent, TransientConflict
from eventstore.audit import verify_chains


def noted(number: int) -> NewEvent:
    return NewEvent("Noted", {"number": number})


async def test_new_and_existing_streams_are_appended_in_the_order_given_and_chained(
    store: EventStore,
) -> None:
    before_2 = await store.append("account-2", [noted(1)], NO_STREAM)
    await store.append("account-4", [noted(1), noted(2)], NO_STREAM)

    async with store.unit_of_work() as unit:
        results = await unit.append_many([
            Append("account-1", [noted(1), noted(2)], NO_STREAM),
            Append("account-2", [noted(2)], 1),
            Append("account-3", [noted(1)], NO_STREAM),
            Append("account-4", [noted(3), noted(4)], 2),
        ])  # fmt: skip

    assert [(r.stream_id, r.version, r.is_duplicate) for r in results] == [
        ("account-1", 2, False), ("account-2", 2, False), ("account-3", 1, False),
        ("account-4", 4, False),
    ]  # fmt: skip
    appended = [event for result in results for event in result.events]
    positions = [event.global_position for event in appended]
    assert positions == sorted(positions)
    assert len({event.tx_id for event in appended}) == 1
    assert results[1].events[0].prev_hash == before_2.events[-1].hash
    for result in results:
        stored = await store.read_stream(result.stream_id, from_version=result.version
                                         - len(result.events) + 1)  # fmt: skip
        assert [(e.event_id, e.global_position, e.hash, e.prev_hash) for e in stored] == [
            (e.event_id, e.global_position, e.hash, e.prev_hash) for e in result.events
        ]
        assert await store.stream_version(result.stream_id) == result.version
    assert (await verify_chains(store)).is_intact


async def test_appending_after_a_younger_transaction_is_refused_as_transient(
    store: EventStore,
) -> None:
    await store.append("account-a", [noted(1)], NO_STREAM)

    with pytest.raises(TransientConflict):
        async with store.unit_of_work() as older:
            await older.append("account-b", [noted(1)], NO_STREAM)  # takes its id now
            await store.append("account-a", [noted(2)], 1)  # a younger transaction, done
            await older.append_many([
                Append("account-c", [noted(1)], NO_STREAM), Append("account-a", [noted(3)], 2),
            ])  # fmt: skip

    assert await store.stream_version("account-a") == 2
    assert await store.stream_version("account-b") == 0
    assert await store.stream_version("account-c") == 0
