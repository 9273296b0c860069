"""Group commit of the saga log: the records of many sagas in one transaction.

An orchestrator advances dozens of sagas at once, and each step of each saga is recorded
before anything leaves the worker. Alone, each record is a transaction of its own: `BEGIN`,
the lease renewal, the append, the `saga_runs` update, `COMMIT`. The recorder queues the
records that arrive while a transaction is in flight and writes them all in the next one,
with one lease renewal for the lot; a record that finds the recorder idle goes at once, so
a quiet orchestrator waits for nothing (docs/saga-group-commit.md).

Each record still keeps its own contract: it is in the log when `record` returns, at the
version its state was folded to, and under this worker's lease when it holds one. A record
whose lease is gone fails alone with `LeaseLost`. When a batch's transaction fails for any
other reason than an unreachable store (one append met another writer, say), it rolls back
whole and each record is tried again on its own, so only the one at fault fails, with the
error it would have had alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from contextvars import Context
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from eventstore import EventStore, StoreUnavailable, UnitOfWork
from ledger import metrics
from saga import log, runs
from saga.definition import SagaDefinition
from saga.state import SagaState

DEFAULT_MAX_BATCH: Final = 64
"""Records one transaction writes at most; more wait for the next."""


class LeaseLost(Exception):
    """Another orchestrator holds the saga now; this worker's record was not appended."""


@dataclass(slots=True)
class _Record:
    """One saga's record waiting for its transaction, and the future its waiter awaits."""

    state: SagaState
    entries: tuple[log.Entry, ...]
    is_leased: bool
    done: asyncio.Future[SagaState] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def saga_id(self) -> str:
        return self.state.saga_id


class SagaRecorder:
    """Appends saga events for one orchestrator, many sagas per transaction."""

    def __init__(
        self,
        store: EventStore,
        definition: SagaDefinition,
        owner: str,
        lease_until: Callable[[], datetime],
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        """`lease_until` gives the end of a lease renewed now."""
        assert max_batch >= 1, "a batch holds at least one record"
        self._store = store
        self._definition = definition
        self._owner = owner
        self._lease_until = lease_until
        self._max_batch = max_batch
        self._queue: list[_Record] = []
        self._writer: asyncio.Task[None] | None = None

    async def record(
        self, state: SagaState, entries: tuple[log.Entry, ...], *, is_leased: bool
    ) -> SagaState:
        """Append `entries` at the version `state` was folded to, renewing this worker's
        lease in the same transaction when `is_leased`; the state after them. Raises
        LeaseLost (nothing appended) and the store's errors, as a lone append would."""
        pending = _Record(state, entries, is_leased)
        self._queue.append(pending)
        if self._writer is None:
            # A context of its own: the writer serves every saga, not the one that woke it.
            self._writer = asyncio.create_task(self._write_queued(), context=Context())
        return await pending.done

    async def close(self) -> None:
        """Cancel the writer and every record waiting (a transaction in flight rolls back).
        The recorder stays usable: a later `record` starts a new writer."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()
            await asyncio.wait({writer})
        _cancel(self._queue)
        self._queue.clear()

    async def _write_queued(self) -> None:
        """Write batches until the queue is empty (records queue up while one is written)."""
        try:
            while self._queue:
                batch = [p for p in self._queue[: self._max_batch] if not p.done.cancelled()]
                del self._queue[: self._max_batch]
                try:
                    await self._write(batch)
                except asyncio.CancelledError:
                    _cancel(batch)
                    raise
                except Exception as error:  # the store is unreachable: each waiter hears it
                    for pending in batch:
                        _settle(pending, error)
        except asyncio.CancelledError:
            _cancel(self._queue)  # no writer is left to write them
            self._queue.clear()
            raise
        finally:
            if self._writer is asyncio.current_task():
                self._writer = None

    async def _write(self, batch: Sequence[_Record]) -> None:
        """The batch in one transaction; when that fails for anything but an unreachable
        store, each record in one of its own, so that only the one at fault fails."""
        if len(batch) > 1:
            try:
                outcomes = await self._together(batch)
            except StoreUnavailable:
                raise
            except Exception:  # another writer, say: each record alone finds which one
                pass
            else:
                for pending, outcome in zip(batch, outcomes, strict=True):
                    _settle(pending, outcome)
                return
        for pending in batch:
            try:
                _settle(pending, (await self._together((pending,)))[0])
            except StoreUnavailable:
                raise
            except Exception as error:
                _settle(pending, error)

    async def _together(self, batch: Sequence[_Record]) -> list[SagaState | LeaseLost]:
        """One transaction: renew the leases, append every record still under its lease
        (in one round trip); a record whose lease is gone comes back as LeaseLost."""
        leased = [pending.saga_id for pending in batch if pending.is_leased]
        async with self._store.unit_of_work() as unit:
            held = await self._renew(unit, leased)
            kept = [p for p in batch if _is_held(p, held)]
            states = iter(await log.record_many(
                unit, self._definition, [(p.state, p.entries) for p in kept]
            ))  # fmt: skip
        if kept:
            metrics.saga_records_per_commit.observe(len(kept))
        return [next(states) if _is_held(p, held) else LeaseLost(p.saga_id) for p in batch]

    async def _renew(self, unit: UnitOfWork, saga_ids: list[str]) -> set[str]:
        """Renew this worker's leases on `saga_ids` in `unit`; the ids it still holds."""
        if not saga_ids:
            return set()
        return await runs.renew_leases(
            unit.connection, self._store.schema, saga_ids, self._owner, self._lease_until()
        )


def _cancel(records: Sequence[_Record]) -> None:
    """Tell the waiters of `records` that they will not be written by this writer."""
    for pending in records:
        if not pending.done.done():
            pending.done.cancel()


def _is_held(pending: _Record, held: set[str]) -> bool:
    """Whether the record may be appended: it needs no lease, or its lease was renewed."""
    return not pending.is_leased or pending.saga_id in held


def _settle(pending: _Record, outcome: SagaState | Exception) -> None:
    """Hand the record's outcome to its waiter (unless it stopped waiting)."""
    if pending.done.done():
        return
    if isinstance(outcome, Exception):
        pending.done.set_exception(outcome)
    else:
        pending.done.set_result(outcome)
