"""A token bucket per client: `burst` requests at once, refilled at `per_s` a second.

In process: each replica keeps its own buckets, so behind N replicas a client may make up
to N times the limit (docs/auth.md). The buckets of the least recently seen clients are
dropped beyond `max_clients`, which bounds memory whatever the number of clients; a
dropped client starts again with a full bucket.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

DEFAULT_MAX_CLIENTS: Final = 100_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated_s: float


class RateLimiter:
    """Token buckets keyed by client (a token subject, or an address)."""

    def __init__(
        self, per_s: float, burst: int, *, max_clients: int = DEFAULT_MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert per_s > 0, "a limit refills"
        assert burst >= 1, "a bucket holds one request at least"
        assert max_clients >= 1, "a limiter tracks one client at least"
        self._per_s = per_s
        self._burst = burst
        self._max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, client: str) -> float:
        """Spend one request of `client`'s bucket: 0 when allowed, else the seconds until
        one is available again (the request is then refused, and costs nothing)."""
        now_s = self._clock()
        bucket = self._buckets.pop(client, None) or _Bucket(float(self._burst), now_s)
        self._buckets[client] = bucket
        if len(self._buckets) > self._max_clients:
            self._buckets.popitem(last=False)
        elapsed_s = max(0.0, now_s - bucket.updated_s)
        bucket.tokens = min(float(self._burst), bucket.tokens + elapsed_s * self._per_s)
        bucket.updated_s = now_s
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self._per_s


def retry_after_header(wait_s: float) -> str:
    """The `Retry-After` value (whole seconds, at least 1) for a wait of `wait_s`."""
    return str(max(1, math.ceil(wait_s)))
