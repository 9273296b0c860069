"""Durable JetStream consumers whose handler's effect and "seen" mark commit together.

    consumer = DurableConsumer(nc, store, "risk-exposure", "ledger.account.>", handler,
                               ConsumerOptions.from_settings(settings))
    await consumer.run()   # until cancelled or stop()

Each message is handled in one PostgreSQL transaction that first records it in the
schema's inbox (STYLE 14) and then runs the handler; the message is acked only after the
commit. A redelivered message finds its inbox row and is acked without running the
handler again, so every message's effect is applied exactly once.

Redelivery is decided here, not by the server (see docs on `ConsumerOptions`):

- a handler failure is naked with the backoff delay of its delivery count; at
  `max_deliver` deliveries the message is parked on `dead_letter_subject(durable)`;
- a message that cannot be parsed is parked at once;
- PostgreSQL being unavailable is nobody's fault: the message is naked and the loop backs
  off; it never parks a message by itself.
"""

from ledger.consumers.consumer import DurableConsumer, HandlerTimedOut
from ledger.consumers.messages import (
    DELIVERY_COUNT_HEADER,
    ERROR_HEADER,
    ORIGINAL_SEQUENCE_HEADER,
    ORIGINAL_SUBJECT_HEADER,
    ConsumedEvent,
    ConsumerBatchHandler,
    ConsumerHandler,
    ConsumerOptions,
    PoisonMessage,
    parse_event,
)

__all__ = [
    "DELIVERY_COUNT_HEADER",
    "ERROR_HEADER",
    "ORIGINAL_SEQUENCE_HEADER",
    "ORIGINAL_SUBJECT_HEADER",
    "ConsumedEvent",
    "ConsumerBatchHandler",
    "ConsumerHandler",
    "ConsumerOptions",
    "DurableConsumer",
    "HandlerTimedOut",
    "PoisonMessage",
    "parse_event",
]
