"""Durable consumers against real PostgreSQL and NATS: every message applied exactly once.

Tests share one NATS server, so each uses its own subject token (`ledger.t<hex>.>`) on the
shared events stream and its own durable name, hence its own dead-letter subject.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import orjson
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from eventstore import EventStore, StoreUnavailable, mark_all_handled
from eventstore._db import Connection
from ledger.bus import connect, dead_letter_subject, ensure_streams
from ledger.consumers import (
    ERROR_HEADER,
    ORIGINAL_SUBJECT_HEADER,
    ConsumedEvent,
    ConsumerHandler,
    ConsumerOptions,
    DurableConsumer,
)
from ledger.embedded import EmbeddedNats
from ledger.metrics import REGISTRY
from ledger.settings import Settings

_FAST = ConsumerOptions(
    fetch_batch=10, fetch_wait_s=0.2, ack_wait_s=2.0, max_deliver=3, backoff_s=(0.05, 0.1)
)
_GUARD_S = 20.0
"""Bound of every wait for the consumer: a guard against hanging, never an assertion."""


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    """A connection to the session's NATS, with the ledger's streams in place."""
    client = await connect([nats_url], "test-consumers")
    await ensure_streams(client.jetstream(), Settings())
    yield client
    await client.close()


@pytest.fixture
def token() -> str:
    """A subject token and durable name no other test uses."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def applied_table(store: EventStore) -> str:
    """A table in the test's schema where handlers record what they applied."""
    table = f"{store.schema}.applied"
    await store.pool.execute(f"create table {table} (event_id text not null)")
    return table


def recording(table: str) -> ConsumerHandler:
    """A handler that inserts the event id into `table`, in the consumer's transaction."""

    async def handle(connection: Connection, event: ConsumedEvent) -> None:
        await connection.execute(f"insert into {table} (event_id) values ($1)", event.event_id)

    return handle


def event_body(event_type: str = "Deposited", event_id: str | None = None) -> tuple[str, bytes]:
    """An event id and the body the relay publishes for it."""
    event_id = event_id or str(uuid.uuid4())
    body = {
        "event_id": event_id,
        "stream_id": "account-1",
        "stream_version": 1,
        "event_type": event_type,
        "data": {"amount_minor": 100},
        "metadata": {"correlation_id": "c-1"},
        "recorded_at": datetime.now(UTC).isoformat(),
        "global_position": 1,
    }
    return event_id, orjson.dumps(body)


async def publish_event(js: JetStreamContext, token: str, event_type: str = "Deposited") -> str:
    """Publish one event under the test's token the way the relay does; return its id."""
    event_id, body = event_body(event_type)
    headers = {"Nats-Msg-Id": event_id, "X-Correlation-Id": "c-1"}
    await js.publish(f"ledger.{token}.account.{event_type}", body, headers=headers)
    return event_id


async def applied_counts(store: EventStore, table: str) -> Counter[str]:
    """How many times each event id was applied."""
    rows = await store.pool.fetch(f"select event_id from {table}")
    return Counter(row["event_id"] for row in rows)


def handled(durable: str, outcome: str) -> float:
    """The consumer's handled-messages counter for one outcome."""
    value = REGISTRY.get_sample_value(
        "ledger_consumer_handled_messages_total", {"consumer": durable, "outcome": outcome}
    )
    return value or 0.0


def redeliveries(durable: str) -> float:
    """The consumer's redeliveries counter."""
    value = REGISTRY.get_sample_value("ledger_consumer_redeliveries_total", {"consumer": durable})
    return value or 0.0


async def wait_until(is_done: Callable[[], Awaitable[bool]]) -> None:
    """Return once `is_done()` holds, or when the guard elapses (the assertions then tell)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_GUARD_S):
            while True:
                if await is_done():
                    return
                await asyncio.sleep(0.05)


async def run_until(consumer: DurableConsumer, is_done: Callable[[], Awaitable[bool]]) -> None:
    """Run the consumer until `is_done()` holds (or the guard elapses), then stop it."""
    task = asyncio.create_task(consumer.run())
    try:
        await wait_until(is_done)
    finally:
        consumer.stop()
        await asyncio.wait_for(task, timeout=_GUARD_S)


async def dead_letters(js: JetStreamContext, durable: str, count: int) -> list[Msg]:
    """The first `count` messages parked by `durable`."""
    subscription = await js.pull_subscribe(
        dead_letter_subject(durable), stream=f"{Settings().events_stream}_DEAD"
    )
    messages = await subscription.fetch(count, timeout=5)
    await subscription.unsubscribe()
    return messages


async def test_each_message_is_applied_once_with_its_inbox_mark(
    nc: Client, store: EventStore, applied_table: str, token: str
) -> None:
    js = nc.jetstream()
    event_ids = [await publish_event(js, token) for _ in range(3)]
    handler = recording(applied_table)
    consumer = DurableConsumer(nc, store, token, f"ledger.{token}.>", handler, _FAST)

    async def all_applied() -> bool:
        return len(await applied_counts(store, applied_table)) == 3

    await run_until(consumer, all_applied)

    assert await applied_counts(store, applied_table) == Counter(event_ids)
    marked = await store.pool.fetch(
        f"select message_id from {store.schema}.inbox where consumer = $1", token
    )
    assert sorted(row["message_id"] for row in marked) == sorted(event_ids)
    assert handled(token, "applied") == 3
    assert await consumer.pending_count() == 0


async def test_redelivered_messages_are_not_applied_again(
    nc: Client, store: EventStore, applied_table: str, token: str
) -> None:
    js = nc.jetstream()
    event_ids = [await publish_event(js, token) for _ in range(3)]
    handler = recording(applied_table)
    first = DurableConsumer(nc, store, token, f"ledger.{token}.>", handler, _FAST)

    async def all_applied() -> bool:
        return len(await applied_counts(store, applied_table)) == 3

    await run_until(first, all_applied)
    # Given the server forgets the consumer's acks, it delivers everything again.
    await js.delete_consumer(_FAST.stream, token)
    second = DurableConsumer(nc, store, token, f"ledger.{token}.>", handler, _FAST)

    async def all_seen_again() -> bool:
        return handled(token, "duplicate") == 3

    await run_until(second, all_seen_again)

    assert handled(token, "duplicate") == 3
    assert await applied_counts(store, applied_table) == Counter(event_ids)


async def test_a_handler_that_fails_twice_then_succeeds_applies_once(
    nc: Client, store: EventStore, applied_table: str, token: str
) -> None:
    js = nc.jetstream()
    event_id = await publish_event(js, token)
    attempts: list[int] = []
    record = recording(applied_table)

    async def flaky(connection: Connection, event: ConsumedEvent) -> None:
        attempts.append(event.delivery_count)
        await record(connection, event)
        if len(attempts) <= 2:
            raise RuntimeError("not yet")

    consumer = DurableConsumer(nc, store, token, f"ledger.{token}.>", flaky, _FAST)

    async def applied() -> bool:
        return handled(token, "applied") == 1

    await run_until(consumer, applied)

    assert attempts == [1, 2, 3]
    assert await applied_counts(store, applied_table) == Counter([event_id])
    assert handled(token, "failed") == 2
    assert redeliveries(token) == 2


async def test_a_batch_whose_commit_fails_acks_none_of_its_messages(
    nc: Client, store: EventStore, applied_table: str, token: str
) -> None:
    # A message is acked only once its effect committed: were a batch acked before its
    # commit, a failed commit followed by an outage (which hands the messages back to the
    # server to deliver later) would lose all of them.
    js = nc.jetstream()
    event_ids = [await publish_event(js, token) for _ in range(3)]
    guard = f"{store.schema}.commit_guard"
    await store.pool.execute(f"create table {guard} (id int unique deferrable initially deferred)")
    record = recording(applied_table)
    calls: list[str] = []

    async def failing_commit_then_outage(connection: Connection, event: ConsumedEvent) -> None:
        calls.append(event.event_id)
        if len(calls) == 1:  # checked at commit: the whole batch's commit fails
            await connection.execute(f"insert into {guard} (id) values (1), (1)")
        elif len(calls) == len(event_ids) + 1:  # then, message by message, an outage
            raise StoreUnavailable("PostgreSQL is restarting")
        await record(connection, event)

    consumer = DurableConsumer(nc, store, token, f"ledger.{token}.>",
                               failing_commit_then_outage, _FAST)  # fmt: skip

    async def all_applied() -> bool:
        return len(await applied_counts(store, applied_table)) == len(event_ids)

    await run_until(consumer, all_applied)

    assert calls[: len(event_ids) + 1] == [*event_ids, event_ids[0]], "one batch, then one by one"
    assert await applied_counts(store, applied_table) == Counter(event_ids)
    assert handled(token, "dead_lettered") == 0
    assert await consumer.pending_count() == 0


async def test_an_unavailable_store_delays_a_message_but_never_parks_it(
    nc: Client, store: EventStore, applied_table: str, token: str
) -> None:
    js = nc.jetstream()
    event_id = await publish_event(js, token)
    outages: list[int] = []
    record = recording(applied_table)

    async def during_outage(connection: Connection, event: ConsumedEvent) -> None:
        if len(outages) < _FAST.max_deliver + 1:
            outages.append(event.delivery_count)
            raise StoreUnavailable("PostgreSQL is restarting")
        await record(connection, event)

    consumer = DurableConsumer(nc, store, token, f"ledger.{token}.>", during_outage, _FAST)

    async def applied() -> bool:
        return handled(token, "applied") == 1

    await run_until(consumer, applied)

    assert await applied_counts(store, applied_table) == Counter([event_id])
    assert handled(token, "dead_lettered") == 0


async def test_an_outage_spends_none_of_the_retries_of_a_failure_after_it(
    nc: Client, store: EventStore, applied_table: str, token: str
) -> None:
    # The server counted every delivery, the ones an outage gave back too: after an outage
    # of max_deliver deliveries, the first failure of the handler parked the message.
    js = nc.jetstream()
    event_id = await publish_event(js, token)
    calls: list[str] = []
    record = recording(applied_table)

    async def outage_then_one_failure(connection: Connection, event: ConsumedEvent) -> None:
        if len(calls) < _FAST.max_deliver:
            calls.append("outage")
            raise StoreUnavailable("PostgreSQL is restarting")
        if len(calls) == _FAST.max_deliver:
            calls.append("failed")
            raise RuntimeError("a lock timeout, say")
        calls.append("applied")
        await record(connection, event)

    consumer = DurableConsumer(nc, store, token, f"ledger.{token}.>", outage_then_one_failure,
                               _FAST)  # fmt: skip

    async def settled() -> bool:
        return handled(token, "applied") == 1 or handled(token, "dead_lettered") == 1

    await run_until(consumer, settled)

    assert calls == ["outage"] * _FAST.max_deliver + ["failed", "applied"]
    assert handled(token, "dead_lettered") == 0
    assert await applied_counts(store, applied_table) == Counter([event_id])


class UnreachableAtFirst:
    """A pool whose first acquisitions time out, like connecting to a PostgreSQL that is
    restarting; later ones are the real pool's."""

    def __init__(self, pool: Any, failures: int) -> None:
        self.pool = pool
        self.failures = failures

    def acquire(self) -> Any:
        if self.failures == 0:
            return self.pool.acquire()
        self.failures -= 1
        return self

    def release(self, connection: Any) -> Any:
        return self.pool.release(connection)

    def __await__(self) -> Generator[Any, None, None]:
        return self.__aenter__().__await__()

    async def __aenter__(self) -> None:
        raise TimeoutError("connecting to PostgreSQL timed out")

    async def __aexit__(self, *_: object) -> None:
        pass


async def test_a_timeout_reaching_the_store_delays_a_message_but_never_parks_it(
    nc: Client, store: EventStore, applied_table: str, token: str
) -> None:
    js = nc.jetstream()
    event_id = await publish_event(js, token)
    unreachable = SimpleNamespace(
        pool=UnreachableAtFirst(store.pool, _FAST.max_deliver + 1), schema=store.schema
    )
    consumer = DurableConsumer(
        nc, unreachable, token, f"ledger.{token}.>", recording(applied_table), _FAST,  # type: ignore[arg-type]
    )  # fmt: skip

    async def applied() -> bool:
        return handled(token, "applied") == 1

    await run_until(consumer, applied)

    assert await applied_counts(store, applied_table) == Counter([event_id])
    assert handled(token, "dead_lettered") == 0
    assert handled(token, "failed") == 0


async def test_a_handlers_own_interface_error_is_its_failure_and_parks_the_message(
    nc: Client, store: EventStore, token: str
) -> None:
    js = nc.jetstream()
    await publish_event(js, token)

    async def misusing_the_connection(connection: Connection, event: ConsumedEvent) -> None:
        raise asyncpg.InterfaceError("cannot perform operation: another operation is in progress")

    consumer = DurableConsumer(
        nc, store, token, f"ledger.{token}.>", misusing_the_connection, _FAST
    )

    async def parked() -> bool:
        return handled(token, "dead_lettered") == 1

    await run_until(consumer, parked)

    assert handled(token, "dead_lettered") == 1
    assert handled(token, "failed") == _FAST.max_deliver - 1


async def test_poison_and_failing_messages_are_parked_and_the_rest_applied(
    nc: Client, store: EventStore, applied_table: str, token: str
) -> None:
    js = nc.jetstream()
    record = recording(applied_table)

    async def refusing_explosions(connection: Connection, event: ConsumedEvent) -> None:
        if event.event_type == "Exploded":
            raise ValueError("cannot apply an explosion")
        await record(connection, event)

    before = await publish_event(js, token)
    poison_subject = f"ledger.{token}.account.Garbled"
    await js.publish(poison_subject, b"{not json", headers={"Nats-Msg-Id": str(uuid.uuid4())})
    failing = await publish_event(js, token, "Exploded")
    after = await publish_event(js, token)
    consumer = DurableConsumer(nc, store, token, f"ledger.{token}.>", refusing_explosions, _FAST)

    async def all_settled() -> bool:
        return handled(token, "applied") == 2 and handled(token, "dead_lettered") == 2

    await run_until(consumer, all_settled)

    assert await applied_counts(store, applied_table) == Counter([before, after])
    parked = await dead_letters(js, token, 2)
    assert [msg.headers and msg.headers[ORIGINAL_SUBJECT_HEADER] for msg in parked] == [
        poison_subject,
        f"ledger.{token}.account.Exploded",
    ]
    assert parked[0].data == b"{not json"
    assert orjson.loads(parked[1].data)["event_id"] == failing
    assert all(msg.headers and msg.headers[ERROR_HEADER] for msg in parked)
    assert parked[1].headers is not None
    assert "cannot apply an explosion" in parked[1].headers[ERROR_HEADER]


async def publish_through_outages(js: JetStreamContext, token: str) -> str:
    """Publish one event, retrying while the client reconnects; return its id."""
    event_id, body = event_body()
    deadline = time.monotonic() + _GUARD_S
    while True:
        try:
            await js.publish(
                f"ledger.{token}.account.Deposited", body, headers={"Nats-Msg-Id": event_id}
            )
            return event_id
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_a_nats_restart_mid_stream_loses_nothing(
    store: EventStore, applied_table: str, token: str, tmp_path: Path
) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    client = await connect([server.start()], "test-restart")
    try:
        js = client.jetstream()
        await ensure_streams(js, Settings())
        event_ids = [await publish_event(js, token) for _ in range(40)]
        record = recording(applied_table)
        restarted = asyncio.Event()
        calls: list[str] = []

        async def held_over_the_restart(connection: Connection, event: ConsumedEvent) -> None:
            calls.append(event.event_id)
            if len(calls) == 11:  # this one commits and acks after the restart
                await restarted.wait()
            await record(connection, event)

        options = ConsumerOptions(
            fetch_batch=5, fetch_wait_s=0.2, ack_wait_s=5.0, max_deliver=3, backoff_s=(0.05,)
        )
        consumer = DurableConsumer(
            client, store, token, f"ledger.{token}.>", held_over_the_restart, options
        )
        task = asyncio.create_task(consumer.run())
        try:
            await wait_for_applied(store, applied_table, 10)
            await asyncio.to_thread(server.restart)
            restarted.set()
            event_ids += [await publish_through_outages(js, token) for _ in range(40)]
            await wait_for_applied(store, applied_table, len(event_ids))
        finally:
            consumer.stop()
            await asyncio.wait_for(task, timeout=_GUARD_S)
        assert await applied_counts(store, applied_table) == Counter(event_ids)
    finally:
        await client.close()
        server.stop()


async def wait_for_applied(store: EventStore, table: str, count: int) -> None:
    """Wait (bounded by the guard) until `count` distinct events are applied."""

    async def enough() -> bool:
        return len(await applied_counts(store, table)) >= count

    await wait_until(enough)


async def test_marking_a_batch_reports_only_the_ids_new_to_the_inbox(store: EventStore) -> None:
    async with store.pool.acquire() as connection, connection.transaction():
        first = await mark_all_handled(connection, store.schema, "batch", ["a", "b", "a"])
        second = await mark_all_handled(connection, store.schema, "batch", ["b", "c"])

    assert first == {"a", "b"}
    assert second == {"c"}


async def test_marking_a_batch_takes_its_ids_in_one_order_so_two_writers_never_deadlock(
    store: EventStore,
) -> None:
    """Another writer holds "a" and then wants "b": a batch that took "b" before waiting on
    "a" would deadlock with it (PostgreSQL would abort one of the two)."""
    async with store.pool.acquire() as other, store.pool.acquire() as batch:
        other_tx = other.transaction()
        await other_tx.start()
        await mark_all_handled(other, store.schema, "replicas", ["a"])
        async with batch.transaction():
            marking = asyncio.create_task(
                mark_all_handled(batch, store.schema, "replicas", ["b", "a"])
            )
            await wait_until(lambda: _is_waiting_on_a_lock(store, batch))
            await mark_all_handled(other, store.schema, "replicas", ["b"])
            await other_tx.commit()
            assert await asyncio.wait_for(marking, timeout=_GUARD_S) == set()


async def _is_waiting_on_a_lock(store: EventStore, connection: Connection) -> bool:
    pid = connection.get_server_pid()
    event = await store.pool.fetchval(
        "select wait_event_type from pg_stat_activity where pid = $1", pid
    )
    return bool(event == "Lock")


async def test_a_consumer_deleted_on_the_server_is_created_again_and_loses_nothing(
    nc: Client, store: EventStore, applied_table: str, token: str
) -> None:
    js = nc.jetstream()
    first_id = await publish_event(js, token)
    consumer = DurableConsumer(
        nc, store, token, f"ledger.{token}.>", recording(applied_table), _FAST
    )
    task = asyncio.create_task(consumer.run())
    try:

        async def applied(count: int) -> bool:
            return len(await applied_counts(store, applied_table)) == count

        await wait_until(lambda: applied(1))
        # When the durable consumer disappears under a waiting pull request,
        await js.delete_consumer(_FAST.stream, token)
        second_id = await publish_event(js, token)
        await wait_until(lambda: applied(2))
    finally:
        consumer.stop()
        await asyncio.wait_for(task, timeout=_GUARD_S)

    # then the consumer re-creates it; the first event comes again and is a duplicate.
    assert await applied_counts(store, applied_table) == Counter([first_id, second_id])


async def test_a_batch_handler_takes_the_new_events_of_a_fetch_and_a_failed_one_falls_back(
    nc: Client, store: EventStore, applied_table: str, token: str
) -> None:
    js = nc.jetstream()
    event_ids = [await publish_event(js, token) for _ in range(6)]
    batches: list[list[str]] = []

    async def handle_all(connection: Connection, events: Sequence[ConsumedEvent]) -> None:
        batches.append([event.event_id for event in events])
        if len(batches) == 1:
            raise RuntimeError("the first batch fails; its messages go one by one")
        await connection.executemany(f"insert into {applied_table} (event_id) values ($1)",
                                     [(event.event_id,) for event in events])  # fmt: skip


    def consumer() -> DurableConsumer:
        return DurableConsumer(nc, store, token, f"ledger.{token}.>",
                               recording(applied_table), _FAST, handle_all=handle_all)  # fmt: skip

    async def all_applied() -> bool:
        return len(await applied_counts(store, applied_table)) == 6

    await run_until(consumer(), all_applied)
    later_ids = [await publish_event(js, token) for _ in range(4)]

    async def all_ten_applied() -> bool:
        return len(await applied_counts(store, applied_table)) == 10

    await run_until(consumer(), all_ten_applied)

    assert await applied_counts(store, applied_table) == Counter(event_ids + later_ids)
    assert set(batches[0]) <= set(event_ids)  # failed, then applied one by one
    by_batches = [event_id for batch in batches[1:] for event_id in batch]
    assert by_batches
    assert by_batches == [event_id for event_id in later_ids if event_id in by_batches]
    assert handled(token, "applied") == 10
