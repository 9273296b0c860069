"""The relay: every committed event of one service's store, published to JetStream.

It is a catch-up subscription whose handler publishes a batch (`BatchPublisher`, pipelined)
and waits for every acknowledgement before the checkpoint commits. Killed at any point, it
publishes again at most the batch that was not checkpointed, and JetStream drops those
duplicates by `Nats-Msg-Id` (the event id) within the stream's duplicate window.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

import nats.errors
import orjson
from nats.aio.client import Client

from eventstore import EventStore, RecordedEvent, Subscription
from eventstore._db import Connection
from eventstore._translate import translated_errors
from eventstore.notifier import Notifier
from ledger import metrics
from ledger.bus import event_subject
from ledger.context import ACTOR_HEADER, CAUSATION_HEADER, CORRELATION_HEADER, TRACEPARENT_HEADER
from ledger.publisher import BatchPublisher, Outgoing
from ledger.settings import Settings

MSG_ID_HEADER: Final = "Nats-Msg-Id"
RELAY_CHECKPOINT: Final = "relay"


def event_message(event: RecordedEvent) -> tuple[bytes, dict[str, str]]:
    """The body and headers under which `event` is published."""
    body = orjson.dumps(
        {
            "event_id": str(event.event_id),
            "stream_id": event.stream_id,
            "stream_version": event.stream_version,
            "event_type": event.event_type,
            "data": event.data,
            "metadata": event.metadata,
            "recorded_at": event.recorded_at.isoformat(),
            "global_position": event.global_position,
        }
    )
    headers = {MSG_ID_HEADER: str(event.event_id)}
    for header, key in (
        (CORRELATION_HEADER, "correlation_id"),
        (CAUSATION_HEADER, "causation_id"),
        (TRACEPARENT_HEADER, "traceparent"),
        (ACTOR_HEADER, "actor"),  # so work that follows from the event keeps its actor
    ):
        value = event.metadata.get(key)
        if isinstance(value, str) and value:
            headers[header] = value
    return body, headers


class EventRelay:
    """Publishes a service's events to the events stream, in commit order, at least once."""

    def __init__(self, store: EventStore, nc: Client, service: str, settings: Settings) -> None:
        self.store = store
        self.service = service
        self.stream = settings.events_stream
        self.ack_timeout_s = settings.relay_ack_timeout_s
        self._is_recovering = False
        self.publisher = BatchPublisher(nc, self.stream)
        """Open (subscribed to its acknowledgements) while `run` or `catch_up` runs."""
        self.subscription = Subscription(
            store,
            RELAY_CHECKPOINT,
            self._publish,
            batch_size=settings.relay_batch_events,
            poll_interval_s=settings.subscription_poll_interval_s,
            transient_errors=(nats.errors.Error, TimeoutError),
        )

    async def run(self, notifier: Notifier | None = None) -> None:
        """Relay until cancelled; NATS or PostgreSQL outages are waited out. `notifier`, the
        store's shared one, saves the relay a LISTEN connection of its own while it runs."""
        async with self.publisher:
            await self.subscription.run(notifier)

    async def catch_up(self) -> int:
        """Relay everything settled now; return how many events were published."""
        async with self.publisher:
            return await self.subscription.catch_up()

    async def _publish(self, _: Connection, events: Sequence[RecordedEvent]) -> None:
        messages = [self._outgoing(event) for event in events]
        if self._is_recovering:
            for message in messages:
                await self.publisher.publish([message], self.ack_timeout_s)
            self._is_recovering = False
        else:
            try:
                await self.publisher.publish(messages, self.ack_timeout_s)
            except BaseException:
                # Some of the batch may be stored and some not: pipelining the retry could
                # store a lost event after a later one of its stream. Go one by one instead.
                self._is_recovering = True
                raise
        self._observe(events)

    def _outgoing(self, event: RecordedEvent) -> Outgoing:
        body, headers = event_message(event)
        subject = event_subject(self.service, event.category, event.event_type)
        return Outgoing(subject, body, headers)

    def _observe(self, events: Sequence[RecordedEvent]) -> None:
        metrics.relay_published_events.labels(self.service).inc(len(events))
        oldest = min(event.recorded_at for event in events)
        age_s = (datetime.now(UTC) - oldest).total_seconds()
        metrics.relay_lag_seconds.labels(self.service).set(max(age_s, 0.0))


async def relay_lag_events(store: EventStore) -> int:
    """Roughly how many committed events the relay has not published (positions, not rows)."""
    with translated_errors():
        row = await store.pool.fetchrow(
            f"select (select coalesce(max(global_position), 0) from {store.schema}.events)"
            f" - coalesce((select global_position from {store.schema}.checkpoints"
            "  where name = $1), 0) as lag",
            RELAY_CHECKPOINT,
        )
    assert row is not None
    return max(int(row["lag"]), 0)
