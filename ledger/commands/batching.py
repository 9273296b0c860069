"""Group serving: the requests that queue up while one batch is served go together next.

An endpoint that decides many commands in one unit of work (a `batch_command`) is served
by one `RequestQueue`: a request that finds the queue idle is served at once, alone, so a
quiet service waits for nothing; the ones that arrive meanwhile form the next batch, up to
`max_batch`. Two requests with the same key (a command id sent twice) never share a batch:
the later waits for the next, where it finds the first one's recorded reply.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from contextvars import Context
from typing import Final, Generic, TypeVar

DEFAULT_MAX_BATCH: Final = 64
"""Requests one batch holds at most; more wait for the next."""

ItemT = TypeVar("ItemT")


class RequestQueue(Generic[ItemT]):
    """Queues items and hands them to `serve` a batch at a time, one batch at a time."""

    def __init__(
        self,
        serve: Callable[[Sequence[ItemT]], Awaitable[None]],
        key: Callable[[ItemT], Hashable],
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        """`serve` answers every item of its batch (it must not raise); `key` tells items
        that may not share a batch."""
        assert max_batch >= 1, "a batch holds at least one request"
        self._serve = serve
        self._key = key
        self._max_batch = max_batch
        self._queue: list[ItemT] = []
        self._server: asyncio.Task[None] | None = None

    @property
    def server(self) -> asyncio.Task[None] | None:
        """The task serving the queue, while there is one (to wait for it at shutdown)."""
        return self._server

    def put(self, item: ItemT) -> None:
        """Queue `item`; it is served in the next batch."""
        self._queue.append(item)
        if self._server is None:
            # A context of its own: the server answers every sender, not the one that woke it.
            self._server = asyncio.create_task(self._serve_queued(), context=Context())

    def clear(self) -> None:
        """Forget the items not yet in a batch (after the server was cancelled at shutdown)."""
        self._queue.clear()

    async def _serve_queued(self) -> None:
        """Serve batches until the queue is empty."""
        try:
            while self._queue:
                await self._serve(self._next_batch())
        finally:
            if self._server is asyncio.current_task():
                self._server = None

    def _next_batch(self) -> list[ItemT]:
        """Up to `max_batch` queued items, in arrival order, no two with one key."""
        batch: list[ItemT] = []
        later: list[ItemT] = []
        keys: set[Hashable] = set()
        for index, item in enumerate(self._queue):
            if len(batch) == self._max_batch:
                later.extend(self._queue[index:])
                break
            key = self._key(item)
            if key in keys:
                later.append(item)
            else:
                keys.add(key)
                batch.append(item)
        self._queue = later
        return batch
