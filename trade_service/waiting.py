"""Holding `?wait=N` reads until a settlement is final, with one query per wake-up.

Every append to the trade store bumps the notifier's generation. Were each waiting read to
wake and look at its own row, N waiting clients would cost N wake-ups and N queries per
append, and the reads alone would grow with the square of the load. Instead one watcher
per store looks at the rows of every waiting read in one query, and wakes only the reads
whose settlement is final.

Nothing is missed: the watcher notes the generation before each look, and looks again
when the generation moves past it (or after `recheck_s`, the fallback if LISTEN is lost),
or when a read starts waiting, so every read is answered by a look that began after it
started to wait and after the last append announced before the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from typing import Any, Final

from eventstore import EventStore
from eventstore.notifier import Notifier
from trade_service import queries
from trade_service.contracts import SettlementStatus
from trade_service.domain import SettlementKind
from trade_service.projections import SETTLEMENT_COLUMNS, TABLE

MAX_LOOK_ROWS: Final = 500
"""The most transfer ids one query of the watcher asks for (more take several queries)."""
_log = logging.getLogger(__name__)
_watches: weakref.WeakKeyDictionary[Notifier, SettlementWatch] = weakref.WeakKeyDictionary()


class SettlementWatch:
    """Waits for settlements of one store to become final, for any number of reads."""

    def __init__(self, store: EventStore, notifier: Notifier, recheck_s: float) -> None:
        assert recheck_s > 0, "the fallback look needs a pause"
        self._store = store
        self._notifier = notifier
        self._recheck_s = recheck_s
        self._waiting: dict[str, list[asyncio.Future[Any]]] = {}
        self._is_added = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None

    @classmethod
    def of(cls, store: EventStore, notifier: Notifier, recheck_s: float) -> SettlementWatch:
        """The watch of `notifier`'s store (one each, made on first use)."""
        watch = _watches.get(notifier)
        if watch is None:
            watch = _watches[notifier] = cls(store, notifier, recheck_s)
        return watch

    @classmethod
    async def close_for(cls, notifier: Notifier) -> None:
        """Stop the watch of `notifier`'s store, if any (its waiting reads time out)."""
        watch = _watches.pop(notifier, None)
        if watch is not None and watch._watcher is not None:
            watch._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch._watcher

    async def final_row(self, transfer_id: str, wait_s: float) -> Any | None:
        """The settlement's row once final; None when it is not final (or not there) within
        `wait_s` seconds."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(transfer_id, []).append(future)
        self._is_added.set()
        if self._watcher is None or self._watcher.done():
            # Owned by this watch: it ends by itself once no read waits (see _watch).
            self._watcher = asyncio.create_task(self._watch())
        try:
            async with asyncio.timeout(wait_s):
                return await future
        except TimeoutError:
            return None
        finally:
            self._forget(transfer_id, future)

    def _forget(self, transfer_id: str, future: asyncio.Future[Any]) -> None:
        futures = self._waiting.get(transfer_id, [])
        if future in futures:
            futures.remove(future)
        if not futures:
            self._waiting.pop(transfer_id, None)

    async def _watch(self) -> None:
        """Look at every waited-for row after each append, until no read waits."""
        while self._waiting:
            self._is_added.clear()
            seen = self._notifier.generation
            try:
                rows = await self._look(list(self._waiting))
            except Exception:  # the reads' own fallback (their timeout) still answers them
                _log.warning("settlements watch: the look failed", exc_info=True)
                rows = {}
            for transfer_id, row in rows.items():
                for future in self._waiting.get(transfer_id, []):
                    if not future.done():
                        future.set_result(row)
            if self._waiting:
                await self._wait_past(seen)

    async def _look(self, ids: list[str]) -> dict[str, Any]:
        """The rows of `ids` that are final (a pending row is not worth decoding: under load
        most waited-for settlements are still pending at each look)."""
        rows: dict[str, Any] = {}
        for start in range(0, len(ids), MAX_LOOK_ROWS):
            for row in await self._store.pool.fetch(
                f"select {SETTLEMENT_COLUMNS} from {self._store.schema}.{TABLE}"
                " where transfer_id = any($1::text[]) and status <> $2",
                ids[start : start + MAX_LOOK_ROWS], SettlementStatus.PENDING.value,
            ):
                rows[row["transfer_id"]] = row
        return rows

    async def _wait_past(self, seen: int) -> None:
        """Until an append after generation `seen`, a new read, or `recheck_s`."""
        if self._is_added.is_set():
            return
        appended = asyncio.ensure_future(self._notifier.wait_past(seen, self._recheck_s))
        added = asyncio.ensure_future(self._is_added.wait())
        try:
            await asyncio.wait({appended, added}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (appended, added):
                waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(appended, added, return_exceptions=True)


async def settled_row(
    store: EventStore, notifier: Notifier, transfer_id: str, kind: SettlementKind,
    wait_s: float, recheck_s: float,
) -> Any:
    """The settlement's row once it is final, or as it is after `wait_s` seconds; raises
    SettlementNotFound when there is no settlement of `kind` with that id."""
    row = await queries.settlement_row(store, store.pool, transfer_id, kind)
    if row["status"] != SettlementStatus.PENDING or wait_s <= 0:
        return row
    watch = SettlementWatch.of(store, notifier, recheck_s)
    final = await watch.final_row(transfer_id, wait_s)
    if final is None:  # still pending after the wait: as it is now
        return await queries.settlement_row(store, store.pool, transfer_id, kind)
    return final
