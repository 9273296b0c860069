"""Parking a message a consumer gave up on, and settling messages with the server.

A parked message is copied to `dead_letter_subject(durable)` with headers that say why,
from where and after how many deliveries, then terminated; if the copy fails it is naked
instead, so a message is never dropped without its copy. Acks, naks and terms that NATS
does not take are logged and forgotten: their loss means a later redelivery, which the
inbox turns into a duplicate.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Final

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from ledger import metrics
from ledger.bus import dead_letter_subject
from ledger.consumers.messages import (
    DELIVERY_COUNT_HEADER,
    ERROR_HEADER,
    MSG_ID_HEADER,
    ORIGINAL_SEQUENCE_HEADER,
    ORIGINAL_SUBJECT_HEADER,
)

_log = logging.getLogger(__name__)

_MAX_ERROR_CHARS: Final = 500

BUS_DOWN: Final = (nats.errors.Error, asyncio.TimeoutError, OSError)
"""Failures of NATS while fetching, publishing or settling: the client reconnects by itself."""


async def park(
    js: JetStreamContext, durable_name: str, msg: Msg, error: Exception, retry_delay_s: float
) -> None:
    """Copy `msg` to the dead-letter subject, then terminate it; nak it (redelivered after
    `retry_delay_s`) if the copy fails."""
    _log.error("consumer %s parks message %s: %r", durable_name, msg.subject, error)
    sequence = msg.metadata.sequence.stream
    headers = dict(msg.headers or {})
    headers.update({
        ERROR_HEADER: _header_safe(repr(error)),
        ORIGINAL_SUBJECT_HEADER: msg.subject,
        ORIGINAL_SEQUENCE_HEADER: str(sequence),
        DELIVERY_COUNT_HEADER: str(msg.metadata.num_delivered),
        # Another consumer may park the same event: the id must be this consumer's.
        MSG_ID_HEADER: f"{durable_name}:{msg.metadata.stream}:{sequence}",
    })  # fmt: skip
    try:
        await js.publish(dead_letter_subject(durable_name), msg.data, headers=headers)
    except BUS_DOWN as publish_error:
        _log.warning("consumer %s cannot park: %r", durable_name, publish_error)
        await quietly(msg.nak(retry_delay_s))
        return
    await quietly(msg.term())
    metrics.consumer_handled_messages.labels(durable_name, "dead_lettered").inc()


async def quietly(settling: Awaitable[None]) -> None:
    """Await an ack, nak, flush or unsubscribe whose loss only means a later redelivery."""
    try:
        await settling
    except BUS_DOWN as error:
        _log.warning("NATS did not take an acknowledgement: %r", error)


def _header_safe(text: str) -> str:
    return " ".join(text.split())[:_MAX_ERROR_CHARS]
