"""What a consumer receives: the parsed event of a JetStream message, and its options."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final

import orjson
from nats.aio.msg import Msg

from eventstore._db import Connection
from ledger.settings import Settings

ERROR_HEADER: Final = "X-Error"
ORIGINAL_SUBJECT_HEADER: Final = "X-Original-Subject"
ORIGINAL_SEQUENCE_HEADER: Final = "X-Original-Stream-Sequence"
DELIVERY_COUNT_HEADER: Final = "X-Delivery-Count"
MSG_ID_HEADER: Final = "Nats-Msg-Id"


@dataclass(frozen=True, slots=True)
class ConsumedEvent:
    """One recorded event as it arrived from JetStream."""

    event_id: str
    stream_id: str
    stream_version: int
    event_type: str
    data: dict[str, Any]
    metadata: dict[str, Any]
    recorded_at: datetime
    global_position: int
    subject: str
    message_id: str
    delivery_count: int


ConsumerHandler = Callable[[Connection, ConsumedEvent], Awaitable[None]]
"""Apply one event inside the given transaction; raise to have it retried."""
ConsumerBatchHandler = Callable[[Connection, Sequence[ConsumedEvent]], Awaitable[None]]
"""Apply a fetched batch's new events, in order, as the one-event handler would each, in the
given transaction; raising fails the batch, whose messages are then handled one by one."""


@dataclass(frozen=True, slots=True)
class ConsumerOptions:
    """Bounds of one durable consumer.

    `ack_wait_s` is the lease of a delivery: a message neither acked nor naked within it
    (its process died) is delivered again; it also bounds one handler call. `backoff_s[n-1]`
    is the pause before delivery n+1 after the n-th attempt failed (the last entry repeats).
    The backoff is not given to the server: there it would replace `ack_wait_s` as the
    lease (its first entry becomes the lease of every first delivery), so messages waiting
    in a fetched batch would be redelivered while still queued. Nor is `max_deliver`: a
    server that gives up on a message whose last attempt died with its process strands it
    silently, while this consumer parks it on the dead-letter subject.
    """

    stream: str = "LEDGER_EVENTS"
    fetch_batch: int = 100
    fetch_wait_s: float = 1.0
    ack_wait_s: float = 30.0
    max_deliver: int = 5
    backoff_s: tuple[float, ...] = (0.5, 2.0, 10.0)

    def __post_init__(self) -> None:
        if not 1 <= self.fetch_batch <= 10_000:
            raise ValueError("fetch_batch must be between 1 and 10000")
        if self.fetch_wait_s <= 0 or self.ack_wait_s <= 0:
            raise ValueError("fetch_wait_s and ack_wait_s must be positive")
        if self.max_deliver <= len(self.backoff_s):
            raise ValueError("max_deliver must exceed the number of backoff steps")
        if not self.backoff_s or min(self.backoff_s) <= 0:
            raise ValueError("backoff_s needs at least one positive delay")

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> ConsumerOptions:
        """The options named in the settings, with `overrides` applied."""
        options = cls(
            stream=settings.events_stream,
            fetch_batch=settings.consumer_fetch_batch,
            ack_wait_s=settings.consumer_ack_wait_s,
            max_deliver=settings.consumer_max_deliver,
            backoff_s=settings.consumer_backoff_s,
        )
        return replace(options, **overrides)

    def retry_delay_s(self, delivery_count: int) -> float:
        """How long to wait before redelivering a message whose `delivery_count`-th try failed."""
        return self.backoff_s[min(max(delivery_count, 1), len(self.backoff_s)) - 1]


class PoisonMessage(Exception):
    """A message that is not a recorded event: it is parked without being handled."""


def parse_event(msg: Msg) -> ConsumedEvent:
    """The event a message carries; raises PoisonMessage when it carries none."""
    try:
        body = orjson.loads(msg.data)
        event = ConsumedEvent(
            event_id=_text(body["event_id"]),
            stream_id=_text(body["stream_id"]),
            stream_version=int(body["stream_version"]),
            event_type=_text(body["event_type"]),
            data=dict(body["data"]),
            metadata=dict(body["metadata"]),
            recorded_at=datetime.fromisoformat(body["recorded_at"]),
            global_position=int(body["global_position"]),
            subject=msg.subject,
            message_id=_text(body["event_id"]),
            delivery_count=msg.metadata.num_delivered,
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise PoisonMessage(f"not a recorded event: {error!r}") from error
    header_id = (msg.headers or {}).get(MSG_ID_HEADER)
    if header_id is not None and header_id != event.event_id:
        raise PoisonMessage(f"{MSG_ID_HEADER} {header_id!r} is not event_id {event.event_id!r}")
    return event


def _text(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"expected a non-empty string, got {value!r}")
    return value


