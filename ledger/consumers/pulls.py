"""Pull requests of one durable consumer, answered into one callback subscription.

nats-py's `PullSubscription.fetch` takes each delivered message with `next_msg`, which
creates two tasks per message: in a busy event loop a batch of a hundred messages costs some
hundreds of loop iterations, tens of milliseconds, before its first message is handled
(docs/relay-latency.md). Here every message delivered to the consumer's inbox is appended
to a buffer by the client's subscription callback, and a fetch takes the buffer whole: it
returns as soon as one message is there and never waits for a batch to fill.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import APIError

_STATUS_HEADER: Final = "Status"
# Statuses that only end a pull request: 404 nothing pending, 408 expired, 100 heartbeat.
# Any other (409 consumer deleted, 503 no JetStream) fails the fetch, so the consumer is
# created and subscribed again.
_ENDINGS: Final = frozenset({"404", "408", "100"})


class PullBatches:
    """Batches of a durable pull consumer, fetched through one inbox.

    Every pull request is answered on the same inbox, so a request that outlives the fetch
    that sent it (its expiry races the fetch's own wait) delivers into the buffer for the
    next fetch, never to an inbox nobody reads.
    """

    def __init__(self, nc: Client, stream: str, consumer: str) -> None:
        self._nc = nc
        self._request_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._inbox = nc.new_inbox()
        self._subscription: Subscription | None = None
        self._buffered: list[Msg] = []
        self._failure: Msg | None = None
        self._arrived = asyncio.Event()

    async def open(self) -> None:
        """Subscribe to the inbox; raises nats.errors.Error when NATS refuses."""
        assert self._subscription is None, "PullBatches opened twice"
        self._subscription = await self._nc.subscribe(self._inbox, cb=self._receive)

    async def close(self) -> list[Msg]:
        """Unsubscribe; return the messages delivered but never fetched (the caller naks
        them). Raises nats.errors.Error when NATS is not reachable to hear it."""
        subscription, self._subscription = self._subscription, None
        leftovers, self._buffered = self._buffered, []
        if subscription is not None:
            await subscription.unsubscribe()
        return leftovers

    async def fetch(self, batch: int, wait_s: float) -> list[Msg]:
        """Up to `batch` messages: those delivered already, else the first ones to arrive
        within `wait_s` (an empty list when none does).

        Raises nats.js.errors.APIError when the server refuses the pull (the consumer is
        gone, JetStream is unavailable), another nats.errors.Error when NATS is unreachable.
        """
        assert 1 <= batch <= 10_000, "batch out of bounds"
        assert self._subscription is not None, "fetch before open"
        if not self._buffered and self._failure is None:
            if not self._nc.is_connected:
                # No request while reconnecting: the client would buffer one per wait and
                # send them all at once on reconnect.
                await asyncio.sleep(wait_s)
                return []
            self._arrived.clear()
            await self._request(batch, wait_s)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._arrived.wait()
        if self._failure is not None:
            failure, self._failure = self._failure, None
            APIError.from_msg(failure)
        taken, self._buffered = self._buffered[:batch], self._buffered[batch:]
        return taken

    async def _request(self, batch: int, wait_s: float) -> None:
        # `no_wait` with `expires`: the server waits up to `expires` for a first message,
        # then ends the request as soon as nothing more is pending; it never holds what
        # it has to fill the batch.
        request = {"batch": batch, "expires": int(wait_s * 1e9), "no_wait": True}
        await self._nc.publish(self._request_subject, orjson.dumps(request), reply=self._inbox)

    async def _receive(self, msg: Msg) -> None:
        status = msg.headers.get(_STATUS_HEADER) if msg.headers else None
        if status is None:
            self._buffered.append(msg)
        elif status in _ENDINGS:
            return
        else:
            self._failure = msg
        self._arrived.set()
