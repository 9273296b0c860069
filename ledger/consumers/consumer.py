"""The durable consumer loop: fetch, handle in one transaction with the inbox mark, ack."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import replace
from typing import Final

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from eventstore import EventStore, StoreUnavailable, mark_all_handled, mark_handled
from eventstore._db import Connection
from eventstore._lease import ConnectionLease
from eventstore._translate import translated_errors
from ledger import context, metrics
from ledger.consumers.dead_letters import BUS_DOWN, park, quietly
from ledger.consumers.messages import (
    ConsumedEvent,
    ConsumerBatchHandler,
    ConsumerHandler,
    ConsumerOptions,
    PoisonMessage,
    parse_event,
)
from ledger.consumers.pulls import PullBatches

_log = logging.getLogger(__name__)

_MAX_RETRY_PAUSE_S: Final = 5.0
_FIRST_RETRY_PAUSE_S: Final = 0.1
MAX_FAILURES_REMEMBERED: Final = 10_000
"""Messages whose handler failures a consumer counts at once (a bound, STYLE 6): beyond
it the oldest count is forgotten, which only buys that message more retries."""


class HandlerTimedOut(Exception):
    """A handler ran longer than the consumer's ack wait."""

    def __init__(self, limit_s: float) -> None:
        super().__init__(f"the handler ran longer than {limit_s:.1f}s")


class _HandlerFailed(Exception):
    """Carries the handler's own error out of the transaction, past the store's translation,
    so it is retried or parked; only a StoreUnavailable means the store is down."""

    def __init__(self, error: Exception) -> None:
        super().__init__(repr(error))
        self.error = error


class DurableConsumer:
    """A durable pull consumer of `filter_subject` that applies each message once."""

    def __init__(
        self,
        nc: Client,
        store: EventStore,
        durable_name: str,
        filter_subject: str,
        handler: ConsumerHandler,
        options: ConsumerOptions | None = None,
        *,
        handle_all: ConsumerBatchHandler | None = None,
    ) -> None:
        """`handler` applies one event; `handle_all`, when given, a fetched batch's new
        events at once (with the same effect), and `handler` is then used only when a
        batch is handled again message by message."""
        self.durable_name = durable_name
        self.filter_subject = filter_subject
        self.options = options or ConsumerOptions()
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream()
        self._store = store
        self._handler = handler
        self._handle_all = handle_all
        self._subscription: PullBatches | None = None
        # Kept while messages keep coming, given back when a fetch finds none or on error.
        self._lease = ConnectionLease(store.pool)
        self._is_stopping = False
        self._failures: OrderedDict[str, int] = OrderedDict()
        """Handler failures by message id: what parks a message. Not the server's delivery
        count, which also counts the deliveries an outage or a restart gave back."""

    async def ensure(self) -> None:
        """Create the durable consumer, or update it to these options; (re)subscribe to it."""
        await self._js.add_consumer(self.options.stream, self._config())
        await self._forget_subscription()
        pulls = PullBatches(self._nc, self.options.stream, self.durable_name)
        await pulls.open()
        self._subscription = pulls

    async def run(self) -> None:
        """Consume until stop() or cancellation; outages of NATS or PostgreSQL are waited out."""
        pause_s = _FIRST_RETRY_PAUSE_S
        try:
            while not self._is_stopping:
                is_healthy = await self._step()
                if is_healthy:
                    pause_s = _FIRST_RETRY_PAUSE_S
                    continue
                await asyncio.sleep(pause_s)
                pause_s = min(pause_s * 2, _MAX_RETRY_PAUSE_S)
            await quietly(self._nc.flush(timeout=1))
        finally:
            # A pull subscription left behind would keep a NATS drain waiting for ever.
            await asyncio.shield(self._forget_subscription())
            await asyncio.shield(self._lease.release())

    def stop(self) -> None:
        """Ask run() to return after the message in hand; fetched but unhandled ones are naked."""
        self._is_stopping = True

    async def stream_last_sequence(self) -> int:
        """The sequence of the last message in the consumer's stream now (of any subject):
        every message published so far is at or before it.

        Raises nats.errors.Error when NATS does not answer.
        """
        info = await self._js.stream_info(self.options.stream)
        return info.state.last_seq

    async def has_handled_through(self, stream_sequence: int) -> bool:
        """True when every message of this consumer's subject up to `stream_sequence` was
        handled and acked: its ack floor has passed it, or nothing is left at all.

        Unlike "nothing pending", this becomes true under a steady flow of new messages too.
        Raises nats.errors.Error when NATS does not answer.
        """
        info = await self._js.consumer_info(self.options.stream, self.durable_name)
        pending = info.num_pending or 0
        metrics.consumer_lag_messages.labels(self.durable_name).set(pending)
        floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
        return floor >= stream_sequence or (pending == 0 and not info.num_ack_pending)

    async def pending_count(self) -> int:
        """Messages of the stream not yet delivered to this consumer; sets the lag gauge.

        Raises nats.errors.Error when NATS does not answer.
        """
        info = await self._js.consumer_info(self.options.stream, self.durable_name)
        pending = info.num_pending or 0
        metrics.consumer_lag_messages.labels(self.durable_name).set(pending)
        return pending

    async def _step(self) -> bool:
        """Fetch and handle one batch; False when NATS or PostgreSQL failed and run must pause."""
        try:
            if self._subscription is None:
                await self.ensure()
        except BUS_DOWN as error:
            _log.warning("consumer %s cannot subscribe: %r", self.durable_name, error)
            await self._forget_subscription()
            return False
        assert self._subscription is not None
        try:
            # Returns what has arrived as soon as anything has: an empty list after the
            # wait, never a wait for the batch to fill (ledger/consumers/pulls.py).
            messages = await self._subscription.fetch(
                self.options.fetch_batch, self.options.fetch_wait_s
            )
        except BUS_DOWN as error:
            _log.warning("consumer %s cannot fetch: %r", self.durable_name, error)
            await self._forget_subscription()
            return False
        if not messages:
            await self._lease.release()  # idle: the pool's other users may have it
            return True
        pending = messages[-1].metadata.num_pending
        metrics.consumer_lag_messages.labels(self.durable_name).set(pending)
        return await self._handle_batch(messages)

    async def _forget_subscription(self) -> None:
        """Drop the subscription, so the next step re-creates the consumer and resubscribes."""
        subscription, self._subscription = self._subscription, None
        if subscription is None:
            return
        try:
            leftovers = await subscription.close()
        except BUS_DOWN as error:
            _log.warning("consumer %s: unsubscribe not heard: %r", self.durable_name, error)
            return
        await self._release(leftovers)

    async def _handle_batch(self, messages: list[Msg]) -> bool:
        # The common case first: the whole batch in one transaction, one commit for many
        # messages. Any failure rolls it all back, and each message is then handled alone,
        # so a failing one is retried or parked by itself.
        if len(messages) > 1 and not self._is_stopping:
            task = asyncio.create_task(self._process_together(messages))
            try:
                is_settled = await asyncio.shield(task)
            except asyncio.CancelledError:
                await asyncio.wait({task})
                raise
            if is_settled:
                return True
        for index, msg in enumerate(messages):
            if self._is_stopping:
                await self._release(messages[index:])
                return True
            if not await self._process_to_the_end(msg):
                await self._release(messages[index + 1 :])
                return False
        return True

    async def _process_together(self, messages: list[Msg]) -> bool:
        """Mark and handle every message in one transaction, then ack them all; False (nothing
        applied, nothing settled) when any message is poison or any step fails."""
        try:
            events = [parse_event(msg) for msg in messages]
        except PoisonMessage:
            return False
        try:
            with translated_errors():
                connection = await self._lease.connection()
                async with connection.transaction():
                    outcomes = await self._mark_and_handle_all(connection, messages, events)
        except Exception:  # every kind of failure is handled again, message by message
            await self._lease.release()  # it may be the connection that failed
            return False
        for msg, event, outcome in zip(messages, events, outcomes, strict=True):
            if event.delivery_count > 1:
                metrics.consumer_redeliveries.labels(self.durable_name).inc()
            metrics.consumer_handled_messages.labels(self.durable_name, outcome).inc()
            await quietly(msg.ack())
        return True

    async def _mark_and_handle_all(
        self, connection: Connection, messages: list[Msg], events: list[ConsumedEvent]
    ) -> list[str]:
        """Mark the whole batch in the inbox with one statement, then run the handler, in
        order, for each message not handled before; return each message's outcome."""
        # One statement, not one round trip per message: the transaction holds a transaction
        # id from its first insert, and until it commits no reader in commit order (the
        # relay among them) sees events of transactions that took their ids after it.
        unmarked = await mark_all_handled(
            connection, self._store.schema, self.durable_name, [e.message_id for e in events]
        )
        outcomes: list[str] = []
        fresh: list[tuple[Msg, ConsumedEvent]] = []
        for msg, event in zip(messages, events, strict=True):
            if event.message_id not in unmarked:
                outcomes.append("duplicate")
                continue
            unmarked.remove(event.message_id)  # a message fetched twice is applied once
            fresh.append((msg, event))
            outcomes.append("applied")
        if self._handle_all is not None:
            async with asyncio.timeout(self.options.ack_wait_s):
                await self._handle_all(connection, [event for _, event in fresh])
            return outcomes
        for msg, event in fresh:
            with context.bound(_context_of(msg, event)):
                await self._handle(connection, event)
        return outcomes

    async def _process_to_the_end(self, msg: Msg) -> bool:
        """Process `msg` even if cancelled meanwhile, so it ends committed and acked, or not."""
        task = asyncio.create_task(self._process(msg))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            await asyncio.wait({task})
            raise

    async def _process(self, msg: Msg) -> bool:
        """Handle one message and settle it with the server; False when the store is down."""
        delivery_count = msg.metadata.num_delivered
        if delivery_count > 1:
            metrics.consumer_redeliveries.labels(self.durable_name).inc()
        try:
            event = parse_event(msg)
        except PoisonMessage as error:
            await self._park(msg, error)
            return True
        with context.bound(_context_of(msg, event)):
            return await self._apply(msg, event)

    async def _apply(self, msg: Msg, event: ConsumedEvent) -> bool:
        try:
            is_new = await self._transact(event)
        except StoreUnavailable as error:  # not the message's fault: never counts towards parking
            _log.warning("consumer %s: store unavailable: %r", self.durable_name, error)
            await quietly(msg.nak(self.options.retry_delay_s(event.delivery_count)))
            return False
        except _HandlerFailed as failed:
            await self._fail(msg, event, failed.error)
            return True
        except Exception as error:  # PostgreSQL refused the mark or the commit: retry or park
            await self._fail(msg, event, error)
            return True
        await quietly(msg.ack())
        self._failures.pop(event.message_id, None)
        outcome = "applied" if is_new else "duplicate"
        metrics.consumer_handled_messages.labels(self.durable_name, outcome).inc()
        return True

    async def _transact(self, event: ConsumedEvent) -> bool:
        """Mark and handle `event` in one transaction; False when it was handled already.

        Raises StoreUnavailable when PostgreSQL cannot be reached (a connect timeout
        included), _HandlerFailed when the handler failed, another EventStoreError when
        PostgreSQL refused the mark or the commit.
        """
        try:
            with translated_errors():
                connection = await self._lease.connection()
                async with connection.transaction():
                    if not await mark_handled(
                        connection, self._store.schema, self.durable_name, event.message_id
                    ):
                        return False
                    await self._handle(connection, event)
                    return True
        except BaseException:
            await self._lease.release()  # it may be the connection that failed
            raise

    async def _handle(self, connection: Connection, event: ConsumedEvent) -> None:
        try:
            async with asyncio.timeout(self.options.ack_wait_s):
                await self._handler(connection, event)
        except StoreUnavailable:
            raise
        except TimeoutError as error:
            raise _HandlerFailed(HandlerTimedOut(self.options.ack_wait_s)) from error
        except Exception as error:
            if connection.is_closed():
                raise  # the connection was lost under the handler: translated as the store's
            raise _HandlerFailed(error) from error

    async def _fail(self, msg: Msg, event: ConsumedEvent, error: Exception) -> None:
        failures = self._failures.pop(event.message_id, 0) + 1
        if failures >= self.options.max_deliver:
            await self._park(msg, error)
            return
        self._failures[event.message_id] = failures  # the newest last
        if len(self._failures) > MAX_FAILURES_REMEMBERED:
            self._failures.popitem(last=False)
        delay_s = self.options.retry_delay_s(failures)
        _log.warning(
            "consumer %s: %s %s failed (failure %d, delivery %d), retry in %.1fs: %r",
            self.durable_name, event.event_type, event.event_id, failures,
            event.delivery_count, delay_s, error,
        )  # fmt: skip
        metrics.consumer_handled_messages.labels(self.durable_name, "failed").inc()
        await quietly(msg.nak(delay_s))

    async def _park(self, msg: Msg, error: Exception) -> None:
        delay_s = self.options.retry_delay_s(msg.metadata.num_delivered)
        await park(self._js, self.durable_name, msg, error, delay_s)

    async def _release(self, messages: list[Msg]) -> None:
        """Give back fetched messages not handled, so they are redelivered without ack_wait."""
        for msg in messages:
            await quietly(msg.nak())

    def _config(self) -> ConsumerConfig:
        return ConsumerConfig(
            name=self.durable_name,
            durable_name=self.durable_name,
            filter_subject=self.filter_subject,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.options.ack_wait_s,
            max_deliver=-1,
        )


def _context_of(msg: Msg, event: ConsumedEvent) -> context.RequestContext:
    """The request context of handling `event`: its correlation and trace, caused by it."""
    return replace(context.from_headers(msg.headers), causation_id=event.event_id)
