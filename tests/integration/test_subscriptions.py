"""Subscriptions: every event once, in commit order, its effect committed with its checkpoint."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import pytest

from eventstore import (
    NO_STREAM,
    EventStore,
    Handler,
    NewEvent,
    Position,
    RecordedEvent,
    Subscription,
)
from eventstore._db import Connection
from eventstore.notifier import Notifier
from tests.integration.settling import wait_settled

GUARD_S = 10.0
"""How long a test waits for something that should happen at once, before it gives up."""


class Boom(Exception):
    """The failure a test's handler raises on purpose."""


def deposited(amount_minor: int) -> NewEvent:
    return NewEvent("Deposited", {"amount_minor": amount_minor})


async def append_deposits(store: EventStore, streams: int, per_stream: int) -> None:
    """Append `per_stream` deposits to each of `streams` accounts, one event per append."""
    for number in range(per_stream):
        for stream in range(streams):
            result = await store.append(f"account-{stream}", [deposited(number)])
    await wait_settled(store, result.position)


async def create_effects_table(store: EventStore) -> None:
    # No primary key on purpose: a duplicate delivery must show up as a second row.
    await store.pool.execute(
        f"create table {store.schema}.effects (event_id uuid not null, stream_id text not null,"
        " tx_id xid8 not null, global_position bigint not null)"
    )


def recording_handler(store: EventStore) -> Handler:
    """A handler whose effect is one row per event, written in the batch's transaction."""

    async def handle(connection: Connection, events: Sequence[RecordedEvent]) -> None:
        await connection.executemany(
            f"insert into {store.schema}.effects values ($1, $2, $3, $4)",
            [(e.event_id, e.stream_id, e.tx_id, e.global_position) for e in events],
        )

    return handle


def failing_once(store: EventStore, batch_number: int) -> Handler:
    """A recording handler that raises, once, on its `batch_number`th batch, after its effect."""
    record = recording_handler(store)
    batches = 0

    async def handle(connection: Connection, events: Sequence[RecordedEvent]) -> None:
        nonlocal batches
        batches += 1
        await record(connection, events)
        if batches == batch_number:
            raise Boom(f"batch {batch_number} fails after writing its effect")

    return handle


async def effect_positions(store: EventStore) -> list[Position]:
    rows = await store.pool.fetch(
        f"select tx_id, global_position from {store.schema}.effects order by tx_id, global_position"
    )
    return [Position(row[0], row[1]) for row in rows]


async def stored_checkpoint(store: EventStore, name: str) -> Position | None:
    row = await store.pool.fetchrow(
        f"select tx_id, global_position from {store.schema}.checkpoints where name = $1", name
    )
    return None if row is None else Position(row[0], row[1])


async def all_positions(store: EventStore) -> list[Position]:
    return [event.position for event in await store.read_all()]


@contextlib.asynccontextmanager
async def running(*subscriptions: Subscription) -> AsyncIterator[None]:
    """Run the subscriptions' `run()` loops for the block, then cancel and await them."""
    tasks = [asyncio.create_task(subscription.run()) for subscription in subscriptions]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def until_effects_reach(store: EventStore, count: int) -> None:
    async def poll() -> None:
        while True:
            if len(await effect_positions(store)) >= count:
                return
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), GUARD_S)


async def until_checkpoint_is(store: EventStore, name: str, position: Position) -> None:
    async def poll() -> None:
        while True:
            if await stored_checkpoint(store, name) == position:
                return
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), GUARD_S)


async def test_every_event_is_delivered_once_in_commit_order_across_batches(
    store: EventStore,
) -> None:
    await append_deposits(store, streams=3, per_stream=4)
    delivered: list[RecordedEvent] = []
    batch_sizes: list[int] = []

    async def handle(_: Connection, events: Sequence[RecordedEvent]) -> None:
        delivered.extend(events)
        batch_sizes.append(len(events))

    handled = await Subscription(store, "all", handle, batch_size=5).catch_up()

    assert handled == 12
    assert batch_sizes == [5, 5, 2]
    assert [event.position for event in delivered] == await all_positions(store)
    assert [event.position for event in delivered] == sorted(e.position for e in delivered)
    assert len({event.event_id for event in delivered}) == 12


async def test_a_transaction_that_commits_late_is_delivered_in_its_place(
    store: EventStore,
) -> None:
    # Given a writer whose transaction id is older than a second writer's, committing after it.
    delivered: list[RecordedEvent] = []

    async def handle(_: Connection, events: Sequence[RecordedEvent]) -> None:
        delivered.extend(events)

    subscription = Subscription(store, "all", handle, batch_size=1)
    async with store.unit_of_work() as late:
        await late.connection.fetchval("select pg_current_xact_id()")
        early = await store.append("account-early", [deposited(1)], NO_STREAM)
        await late.append("account-late", [deposited(2)], NO_STREAM)

        # While the older transaction runs, the younger one's event is held back, not skipped.
        assert await subscription.catch_up() == 0

    # When it commits, both arrive, the older transaction's first.
    assert await subscription.catch_up() == 2
    assert [event.stream_id for event in delivered] == ["account-late", "account-early"]
    assert delivered[0].global_position > early.events[0].global_position


async def test_a_failing_handler_leaves_neither_effect_nor_checkpoint(store: EventStore) -> None:
    # Given six events and a handler that fails on its second batch after writing its effect,
    await append_deposits(store, streams=2, per_stream=3)
    await create_effects_table(store)

    # when the subscription catches up,
    with pytest.raises(Boom):
        await Subscription(store, "effects", failing_once(store, 2), batch_size=2).catch_up()

    # then only the first batch's effect and checkpoint are stored.
    positions = await all_positions(store)
    assert await effect_positions(store) == positions[:2]
    assert await stored_checkpoint(store, "effects") == positions[1]


async def test_the_next_run_delivers_the_failed_batch_again(store: EventStore) -> None:
    await append_deposits(store, streams=2, per_stream=3)
    await create_effects_table(store)
    subscription = Subscription(store, "effects", failing_once(store, 2), batch_size=2)
    with pytest.raises(Boom):
        await subscription.catch_up()

    handled = await subscription.catch_up()

    assert handled == 4
    assert await effect_positions(store) == await all_positions(store)


async def test_a_checkpoint_is_named_and_outlives_its_subscription_object(
    store: EventStore,
) -> None:
    await append_deposits(store, streams=2, per_stream=2)

    async def ignore(_: Connection, __: Sequence[RecordedEvent]) -> None:
        return None

    assert await Subscription(store, "first", ignore).catch_up() == 4
    result = await store.append("account-9", [deposited(9)], NO_STREAM)
    await wait_settled(store, result.position)

    assert await Subscription(store, "first", ignore).catch_up() == 1
    assert await Subscription(store, "first", ignore).catch_up() == 0
    assert await Subscription(store, "second", ignore).catch_up() == 5
    assert await stored_checkpoint(store, "first") == await stored_checkpoint(store, "second")


async def test_two_instances_of_one_subscription_give_each_effect_once(
    store: EventStore,
) -> None:
    # Given two instances of one subscription following the store at once,
    await create_effects_table(store)
    instances = [
        Subscription(store, "shared", recording_handler(store), batch_size=3, poll_interval_s=0.02)
        for _ in range(2)
    ]

    # when several writers append while they run,
    async with running(*instances):
        await asyncio.gather(
            *(store.append(f"account-{n}", [deposited(k)]) for n in range(4) for k in range(10))
        )
        await until_effects_reach(store, 40)

    # then every event's effect is there exactly once.
    assert await effect_positions(store) == await all_positions(store)
    assert await Subscription(store, "shared", recording_handler(store)).catch_up() == 0


async def test_run_is_woken_by_notify_not_by_polling(store: EventStore) -> None:
    arrived: asyncio.Queue[RecordedEvent] = asyncio.Queue()

    async def handle(_: Connection, events: Sequence[RecordedEvent]) -> None:
        for event in events:
            arrived.put_nowait(event)

    await store.append("account-1", [deposited(1)], NO_STREAM)
    subscription = Subscription(store, "woken", handle, poll_interval_s=30)
    async with running(subscription):
        first = await asyncio.wait_for(arrived.get(), GUARD_S)

        # With a 30 s poll, only the append's NOTIFY can bring the next event within the guard.
        await store.append("account-1", [deposited(2)], 1)
        second = await asyncio.wait_for(arrived.get(), GUARD_S)

    assert (first.stream_version, second.stream_version) == (1, 2)


async def test_runs_on_a_shared_notifier_are_woken_by_it_and_leave_it_open(
    store: EventStore,
) -> None:
    arrived: asyncio.Queue[RecordedEvent] = asyncio.Queue()

    async def handle(_: Connection, events: Sequence[RecordedEvent]) -> None:
        for event in events:
            arrived.put_nowait(event)

    async with Notifier(store) as notifier:
        for version in (1, 2):  # a second run, as after a restart, on the same notifier
            subscription = Subscription(store, "shared", handle, poll_interval_s=30)
            task = asyncio.create_task(subscription.run(notifier))
            await store.append("account-1", [deposited(version)], version - 1)
            # With a 30 s poll, only the shared notifier can wake the run within the guard.
            event = await asyncio.wait_for(arrived.get(), GUARD_S)
            await until_checkpoint_is(store, "shared", event.position)  # the batch committed
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert event.stream_version == version

        for _ in range(200):  # an announcement's NOTIFY may hold a connection for a moment
            in_use = store.pool.get_size() - store.pool.get_idle_size()
            if in_use == 1:
                break
            await asyncio.sleep(0.05)
        assert in_use == 1  # the notifier's own: the runs gave theirs back
        # and left it open: it still wakes waiters on an append.
        seen = notifier.generation
        await store.append("account-1", [deposited(3)], 2)
        await notifier.wait_past(seen, GUARD_S)
        assert notifier.generation > seen


async def test_run_is_woken_by_another_process_s_notify(store: EventStore) -> None:
    arrived: asyncio.Queue[RecordedEvent] = asyncio.Queue()

    async def handle(_: Connection, events: Sequence[RecordedEvent]) -> None:
        for event in events:
            arrived.put_nowait(event)

    # Another store object on the same schema stands for another process: its appends wake
    # this one's subscription only through PostgreSQL's NOTIFY, not in-process.
    elsewhere = EventStore(store.pool, store.schema)
    subscription = Subscription(store, "woken-elsewhere", handle, poll_interval_s=30)
    async with running(subscription):
        await elsewhere.append("account-1", [deposited(1)], NO_STREAM)
        first = await asyncio.wait_for(arrived.get(), GUARD_S)
    await elsewhere.announcer.close()

    assert first.stream_version == 1


async def test_an_announcement_from_inside_a_transaction_reaches_local_waiters_after_it(
    store: EventStore,
) -> None:
    async with Notifier(store) as notifier:
        seen = notifier.generation

        store.announcer.announce(is_committed=False)

        assert notifier.generation == seen  # not at once: the transaction has not committed
        await asyncio.wait_for(notifier.wait_past(seen, GUARD_S), GUARD_S)
        assert notifier.generation > seen  # the NOTIFY's echo, which is not skipped


async def test_a_category_subscription_sees_only_its_category(store: EventStore) -> None:
    await store.append("account-1", [deposited(1)], NO_STREAM)
    await store.append("transfer-1", [NewEvent("TransferRequested", {})], NO_STREAM)
    result = await store.append("account-2", [deposited(2)], NO_STREAM)
    await wait_settled(store, result.position)
    delivered: list[RecordedEvent] = []

    async def handle(_: Connection, events: Sequence[RecordedEvent]) -> None:
        delivered.extend(events)

    handled = await Subscription(store, "accounts", handle, category="account").catch_up()

    assert handled == 2
    assert [event.stream_id for event in delivered] == ["account-1", "account-2"]


async def test_catch_up_returns_how_many_events_it_handled(store: EventStore) -> None:
    async def ignore(_: Connection, __: Sequence[RecordedEvent]) -> None:
        return None

    subscription = Subscription(store, "count", ignore, batch_size=4)
    assert await subscription.catch_up() == 0

    await append_deposits(store, streams=3, per_stream=3)

    assert await subscription.catch_up() == 9
    assert await subscription.catch_up() == 0
