"""Commit order keeps each stream in version order, whichever transaction got its id first.

A transaction's id (`tx_id`, the first key of read_all's order) is handed out at its first
write or row lock, not when it takes a stream's lock. A transaction that wrote elsewhere
first, then queued for a stream behind a younger one, would otherwise append the stream's
next version under an older id: read_all, the relay, and every rebuild of a read model
would then see version 3 before version 2. Writers queue for a stream on a lock that takes
no id, and the store refuses an append under an older id than the stream's last as a
TransientConflict: the transaction is run again with a new id (docs/append-order.md).
(Found by the system tests: a balances rebuild met an account's versions out of order.)
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest

from eventstore import NO_STREAM, EventStore, NewEvent, TransientConflict, verify_chains
from tests.integration.settling import wait_settled


def event(number: int) -> NewEvent:
    return NewEvent("Noted", {"number": number})


async def test_an_append_under_an_older_transaction_id_than_the_streams_last_is_refused(
    store: EventStore,
) -> None:
    await store.append("account-a", [event(1)], NO_STREAM)

    with pytest.raises(TransientConflict):
        async with store.unit_of_work() as older:
            await older.append("account-b", [event(1)], NO_STREAM)  # takes its id now
            await store.append("account-a", [event(2)], 1)  # a younger transaction, done
            await older.append("account-a", [event(3)], 2)

    assert await store.stream_version("account-a") == 2
    assert await store.stream_version("account-b") == 0


async def test_run_again_the_refused_transaction_appends_after_the_stream_in_commit_order(
    store: EventStore,
) -> None:
    await store.append("account-a", [event(1)], NO_STREAM)
    with pytest.raises(TransientConflict):
        async with store.unit_of_work() as older:
            await older.append("account-b", [event(1)], NO_STREAM)
            await store.append("account-a", [event(2)], 1)
            await older.append("account-a", [event(3)], 2)

    async with store.unit_of_work() as again:
        await again.append("account-b", [event(1)], NO_STREAM)
        last = await again.append("account-a", [event(3)], 2)
    await wait_settled(store, last.position)

    versions: dict[str, list[int]] = defaultdict(list)
    for recorded in await store.read_all():
        versions[recorded.stream_id].append(recorded.stream_version)
    assert versions == {"account-a": [1, 2, 3], "account-b": [1]}


async def test_concurrent_appends_to_one_stream_all_succeed_and_read_in_version_order(
    store: EventStore,
) -> None:
    # Each append is its transaction's first write: it queues without an id, so none of them
    # is refused, and their ids come in the order they got the stream.
    results = await asyncio.gather(
        *(store.append(f"account-{n % 3}", [event(n)]) for n in range(30))
    )
    await wait_settled(store, max(result.position for result in results))

    versions: dict[str, list[int]] = defaultdict(list)
    for recorded in await store.read_all():
        versions[recorded.stream_id].append(recorded.stream_version)
    assert versions == {f"account-{n}": list(range(1, 11)) for n in range(3)}


async def test_appends_of_one_transaction_to_one_stream_keep_their_order(
    store: EventStore,
) -> None:
    async with store.unit_of_work() as unit:
        await unit.append("account-a", [event(1)], NO_STREAM)
        await unit.append("account-b", [event(1)], NO_STREAM)
        last = await unit.append("account-a", [event(2)], 1)
    await wait_settled(store, last.position)

    assert [(e.stream_id, e.stream_version) for e in await store.read_all()] == [
        ("account-a", 1), ("account-b", 1), ("account-a", 2),
    ]  # fmt: skip


async def test_an_append_is_never_recorded_before_the_last_event_of_its_stream(
    store: EventStore,
) -> None:
    # recorded_at was the start of the appending transaction: one that began earlier but
    # appended after a later one recorded a later version at an earlier time, and an
    # account's statement and balance "as of" the same instant disagreed.
    await store.append("account-a", [event(1)], NO_STREAM)
    async with store.unit_of_work() as earlier:
        await earlier.connection.execute("select 1")  # begun: its now() is fixed here
        await asyncio.sleep(0.05)
        await store.append("account-a", [event(2)], 1)  # began later, commits first
        await earlier.append("account-a", [event(3)], 2)

    events = await store.read_stream("account-a")
    times = [recorded.recorded_at for recorded in events]
    assert times == sorted(times)
    assert times[2] == times[1]  # no earlier than the last, and no later than needed
    assert (await verify_chains(store)).is_intact  # the chain hashes the same instant
