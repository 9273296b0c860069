"""Python's garbage collector, tuned for a long-running server (docs/gc-thresholds.md).

A server allocates many short-lived containers per request (messages, rows, models, dicts)
over a large, long-lived heap (the app, its routes and models, the services' state). With
the default thresholds (700, 10, 10) the young generation is collected after every 700 net
allocations, and every tenth of those also walks the middle one: under load that is
thousands of collections a second, most of them finding nothing to free, since
reference counting has freed the short-lived objects already. Collecting less often only
delays freeing reference cycles, the few objects that need the collector at all.
"""

from __future__ import annotations

import gc
from typing import Final

SERVING_THRESHOLDS: Final = (50_000, 20, 100)
"""Young generation after 50,000 net allocations, middle after 20 young collections, old
after 100 middle ones (the 25% rule of CPython still holds full collections back further)."""


def tune_for_serving() -> None:
    """Collect less often than CPython's defaults, for the life of this process."""
    gc.set_threshold(*SERVING_THRESHOLDS)
