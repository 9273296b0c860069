"""The relay publishes every committed event to JetStream exactly once, in order per stream,
whatever point it is killed at."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence

import orjson
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from eventstore import ANY, EventStore, NewEvent, RecordedEvent
from eventstore._db import Connection
from ledger.bus import connect, ensure_streams
from ledger.relay import EventRelay
from ledger.settings import Settings
from tests.integration.settling import wait_settled

SETTINGS = Settings(relay_batch_events=7, subscription_poll_interval_s=0.05)


@pytest.fixture
async def nats_client(nats_url: str) -> AsyncIterator[Client]:
    client = await connect([nats_url], "test-relay")
    await ensure_streams(client.jetstream(), SETTINGS)
    yield client
    await client.drain()


@pytest.fixture
def service() -> str:
    """A service name of this test alone, so its subjects are its own on the shared stream."""
    return f"svc{uuid.uuid4().hex[:10]}"


async def append_across_streams(store: EventStore, count: int) -> list[RecordedEvent]:
    appended: list[RecordedEvent] = []
    for number in range(count):
        event = NewEvent("Deposited", {"amount_minor": number}, {"correlation_id": f"c{number}"})
        result = await store.append(f"account-{number % 5}", [event], ANY)
        appended.extend(result.events)
    await wait_settled(store, appended[-1].position)
    return appended


async def published(js: JetStreamContext, service: str, expected: int) -> list[dict[str, object]]:
    """Every message JetStream holds for the service's subjects, in stream order."""
    subscription = await js.pull_subscribe(f"ledger.{service}.>", stream=SETTINGS.events_stream)
    bodies: list[dict[str, object]] = []
    try:
        for _ in range(50):
            try:
                messages = await subscription.fetch(100, timeout=0.3)
            except TimeoutError:
                if len(bodies) >= expected:
                    break
                continue
            for message in messages:
                bodies.append(orjson.loads(message.data))
                await message.ack()
    finally:
        await subscription.unsubscribe()
    return bodies


def assert_each_once_in_stream_order(
    bodies: Sequence[dict[str, object]], appended: Sequence[RecordedEvent]
) -> None:
    assert sorted(str(body["event_id"]) for body in bodies) == sorted(
        str(event.event_id) for event in appended
    )
    by_stream: dict[str, list[int]] = {}
    for body in bodies:
        by_stream.setdefault(str(body["stream_id"]), []).append(int(str(body["stream_version"])))
    for versions in by_stream.values():
        assert versions == sorted(versions)


async def test_relay_publishes_every_event_once_with_headers(
    store: EventStore, nats_client: Client, service: str
) -> None:
    appended = await append_across_streams(store, 20)

    relayed = await EventRelay(store, nats_client, service, SETTINGS).catch_up()

    bodies = await published(nats_client.jetstream(), service, 20)
    assert relayed == 20
    assert_each_once_in_stream_order(bodies, appended)
    assert bodies[0]["metadata"] == {"correlation_id": "c0"}


async def test_a_relay_killed_after_publishing_republishes_only_duplicates(
    store: EventStore, nats_client: Client, service: str
) -> None:
    """The crash lands between JetStream's acks and the checkpoint's commit."""
    appended = await append_across_streams(store, 30)
    js = nats_client.jetstream()
    crashing = EventRelay(store, nats_client, service, SETTINGS)
    publish = crashing._publish

    async def publish_then_crash(connection: Connection, events: Sequence[RecordedEvent]) -> None:
        await publish(connection, events)
        if events[-1].global_position > 10:
            raise asyncio.CancelledError

    crashing.subscription.handler = publish_then_crash
    with pytest.raises(asyncio.CancelledError):
        await crashing.catch_up()

    await EventRelay(store, nats_client, service, SETTINGS).catch_up()

    assert_each_once_in_stream_order(await published(js, service, 30), appended)


async def test_a_relay_cancelled_at_random_points_loses_and_doubles_nothing(
    store: EventStore, nats_client: Client, service: str
) -> None:
    js = nats_client.jetstream()
    appended = await append_across_streams(store, 60)

    for delay_s in (0.001, 0.005, 0.01, 0.02, 0.03):
        running = asyncio.create_task(EventRelay(store, nats_client, service, SETTINGS).run())
        await asyncio.sleep(delay_s)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        appended.extend(await append_across_streams(store, 5))
    await EventRelay(store, nats_client, service, SETTINGS).catch_up()

    assert_each_once_in_stream_order(await published(js, service, len(appended)), appended)
