"""Pipelined JetStream publishing: a batch of messages out, then every acknowledgement in.

nats-py's `publish_async` spends about 80 µs of CPU per message here on what the relay never
needs: a semaphore, a future with a done callback and a fresh token per message, then a JSON
decode into a `PubAck` per acknowledgement. It capped the relay below 10,000 events/s. The
relay only asks "did JetStream store every message of this batch", so `BatchPublisher`
publishes each message with plain `nc.publish`, its reply subject one token under a wildcard
inbox of the publisher's own, and counts the batch's acknowledgements down to one future:
about 40 µs a message (docs/relay-throughput.md).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import APIError, NoStreamResponseError

EXPECTED_STREAM_HEADER: Final = "Nats-Expected-Stream"
_NO_RESPONDERS: Final = "503"


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish."""

    subject: str
    body: bytes
    headers: dict[str, str]


class _Batch:
    """The acknowledgements one `publish` still waits for."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.stored = asyncio.get_running_loop().create_future()

    def acknowledged(self, refusal: Exception | None) -> None:
        if self.stored.done():
            return
        if refusal is not None:
            self.stored.set_exception(refusal)
            return
        self.left -= 1
        if self.left == 0:
            self.stored.set_result(None)


class BatchPublisher:
    """Publishes batches to one JetStream stream; use as an async context manager."""

    def __init__(self, nc: Client, stream: str) -> None:
        self.nc = nc
        self.stream = stream
        self._inbox = f"{nc.new_inbox()}."
        self._tokens = itertools.count()
        self._waiting: dict[str, _Batch] = {}
        self._subscription: Subscription | None = None

    async def __aenter__(self) -> BatchPublisher:
        self._subscription = await self.nc.subscribe(f"{self._inbox}*", cb=self._on_ack)
        return self

    async def __aexit__(self, *_: object) -> None:
        subscription, self._subscription = self._subscription, None
        self._waiting.clear()
        if subscription is not None and not self.nc.is_closed:
            await subscription.unsubscribe()

    async def publish(self, messages: Sequence[Outgoing], timeout_s: float) -> None:
        """Publish `messages` in order; return once the stream has stored every one.

        Raises the stream's refusal of any (`nats.js.errors.APIError`,
        `NoStreamResponseError`) as soon as it comes, TimeoutError when the acknowledgements
        take longer than `timeout_s`, and `nats.errors.Error` when NATS takes no message.
        """
        assert self._subscription is not None, "publish inside `async with BatchPublisher`"
        if not messages:
            return
        batch = _Batch(len(messages))
        tokens: list[str] = []
        try:
            for message in messages:
                token = str(next(self._tokens))
                self._waiting[token] = batch
                tokens.append(token)
                headers = {**message.headers, EXPECTED_STREAM_HEADER: self.stream}
                await self.nc.publish(message.subject, message.body, reply=self._inbox + token,
                                      headers=headers)  # fmt: skip
            async with asyncio.timeout(timeout_s):
                await batch.stored
        finally:
            for token in tokens:  # late acknowledgements of a batch given up find nothing
                self._waiting.pop(token, None)
            if batch.stored.done() and not batch.stored.cancelled():
                batch.stored.exception()  # retrieved: a refusal raced with an error here

    async def _on_ack(self, msg: Msg) -> None:
        batch = self._waiting.pop(msg.subject[len(self._inbox) :], None)
        if batch is not None:
            batch.acknowledged(_refusal(msg))


def _refusal(ack: Msg) -> Exception | None:
    """Why the stream did not store the message, or None if it did (or already had it)."""
    if ack.headers and ack.headers.get("Status") == _NO_RESPONDERS:
        return NoStreamResponseError()
    try:
        body = orjson.loads(ack.data)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        return APIError(description=f"unreadable acknowledgement {ack.data[:200]!r}")
    error = body.get("error")
    if error is None:
        if isinstance(body.get("seq"), int) and body.get("stream"):
            return None  # stored, or known already (`duplicate`)
        return APIError(description=f"not a JetStream acknowledgement {ack.data[:200]!r}")
    try:
        APIError.from_error(error)  # raises the error's own class, never returns
    except APIError as refusal:
        return refusal
    except (KeyError, TypeError):  # not the shape nats-py knows
        pass
    return APIError(description=f"refused: {error!r:.200}")
