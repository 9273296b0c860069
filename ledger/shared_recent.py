"""One answer for many askers: the result of an async check, shared by the callers that
ask while it runs and reused for a short while after.

The health and metrics routes are public (probes and scrapers carry no token), and each
answer queries every store. Shared this way, a flood of requests costs the databases one
check per `max_age_s`, not one per request, and cannot take the pool from the API.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SharedRecent(Generic[T]):
    """`fetch()`'s result: callers during a fetch await that one, and a fetch that started
    less than `max_age_s` ago answers without another."""

    def __init__(
        self, fetch: Callable[[], Awaitable[T]], max_age_s: float,
        *, clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        assert max_age_s >= 0, "an age is not negative"
        self._fetch = fetch
        self._max_age_s = max_age_s
        self._clock = clock
        self._task: asyncio.Task[T] | None = None
        self._started_at = -math.inf

    async def get(self) -> T:
        """The latest result, fetched anew when the last fetch is done and too old."""
        task = self._task
        if task is None or (task.done() and self._clock() - self._started_at > self._max_age_s):
            self._started_at = self._clock()
            task = self._task = asyncio.ensure_future(self._fetch())
        # Shielded: a caller that gives up (a client gone) does not cancel the others' fetch.
        return await asyncio.shield(task)
