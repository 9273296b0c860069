"""Catch-up subscriptions: a named checkpoint in PostgreSQL, woken by NOTIFY or by polling.

Each batch is read, handed to the handler and checkpointed in one transaction, so a handler
that writes to the same database sees every event exactly once, in commit order. An advisory
lock per subscription lets many instances run one subscription: one advances it at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from eventstore import reads
from eventstore._db import Connection, Executor
from eventstore._lease import ConnectionLease
from eventstore._translate import translated_errors
from eventstore.errors import StoreUnavailable
from eventstore.events import START, Position, RecordedEvent
from eventstore.notifier import Notifier
from eventstore.store import EventStore

Handler = Callable[[Connection, Sequence[RecordedEvent]], Awaitable[None]]

_log = logging.getLogger(__name__)
_MAX_BACKOFF_S: Final = 5.0
_FIRST_SETTLE_WAIT_S: Final = 0.01


async def load_checkpoint(executor: Executor, schema: str, name: str) -> Position:
    """Where the subscription `name` stands; START when it never ran."""
    row = await executor.fetchrow(
        f"select tx_id, global_position from {schema}.checkpoints where name = $1", name
    )
    return START if row is None else Position(row[0], row[1])


async def save_checkpoint(
    executor: Executor, schema: str, name: str, position: Position
) -> None:
    """Record that the subscription `name` has handled everything up to `position`."""
    await executor.execute(
        f"insert into {schema}.checkpoints (name, tx_id, global_position) values ($1, $2, $3)"
        " on conflict (name) do update set tx_id = excluded.tx_id,"
        " global_position = excluded.global_position, updated_at = now()",
        name,
        *position,
    )


async def try_lock(connection: Connection, schema: str, name: str) -> bool:
    """Take the subscription's lock for the current transaction, if no one holds it."""
    return bool(
        await connection.fetchval(
            "select pg_try_advisory_xact_lock(hashtext($1), hashtext($2))", schema, name
        )
    )


async def lock(connection: Connection, schema: str, name: str) -> None:
    """Wait for the subscription's lock, held until the current transaction ends."""
    await connection.execute(
        "select pg_advisory_xact_lock(hashtext($1), hashtext($2))", schema, name
    )


class Subscription:
    """Deliver a store's events, in commit order, to `handler`, from a named checkpoint."""

    def __init__(
        self,
        store: EventStore,
        name: str,
        handler: Handler,
        *,
        category: str | None = None,
        batch_size: int = 500,
        poll_interval_s: float = 1.0,
        transient_errors: tuple[type[Exception], ...] = (),
    ) -> None:
        assert 1 <= batch_size <= 10_000, "batch_size out of bounds"
        assert poll_interval_s > 0, "poll_interval_s must be positive"
        self.store = store
        self.name = name
        self.handler = handler
        self.category = category
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        # Errors after which `run` waits and tries the batch again; StoreUnavailable always is.
        self.transient_errors: tuple[type[Exception], ...] = (StoreUnavailable, *transient_errors)
        self._checkpoint: Position | None = None
        """The checkpoint as this instance last read or wrote it (another may have moved it)."""

    async def process_batch(self) -> int:
        """Handle the next batch; return how many events it held (0 if none or not ours)."""
        with translated_errors():
            async with self.store.pool.acquire() as connection:
                return await self._process_batch_on(connection)

    async def _process_batch_on(self, connection: Connection) -> int:
        schema = self.store.schema
        with translated_errors():
            async with connection.transaction():
                if not await try_lock(connection, schema, self.name):
                    return 0
                after = await load_checkpoint(connection, schema, self.name)
                self._checkpoint = after
                events = await reads.fetch_in_commit_order(
                    connection, schema, after=after, limit=self.batch_size,
                    category=self.category, upcasters=self.store.upcasters,
                )
                if not events:
                    return 0
                await self.handler(connection, events)
                await save_checkpoint(connection, schema, self.name, events[-1].position)
        self._checkpoint = events[-1].position  # committed
        return len(events)

    async def _may_have_work(self, connection: Connection) -> bool:
        """Whether a settled event may follow the checkpoint: one statement, where a batch
        that finds nothing costs five (wake-ups often come before their events settle)."""
        if self._checkpoint is None:
            return True
        with translated_errors():
            return await reads.has_settled_after(
                connection, self.store.schema, self._checkpoint, category=self.category
            )

    async def catch_up(self) -> int:
        """Handle batches until none is left now; return how many events were handled."""
        total = 0
        async with ConnectionLease(self.store.pool) as lease:
            while (count := await self._process_batch_on(await lease.connection())) > 0:
                total += count
        return total

    async def run(self, notifier: Notifier | None = None) -> None:
        """Follow the store until cancelled; waits out transient errors and retries.

        `notifier` is the store's shared one, if the caller has it open; without it the
        subscription listens on a connection of its own for as long as it runs.
        """
        async with contextlib.AsyncExitStack() as resources:
            if notifier is None:
                notifier = await resources.enter_async_context(Notifier(self.store))
            lease = await resources.enter_async_context(ConnectionLease(self.store.pool))
            await self._follow(notifier, lease)

    async def _follow(self, notifier: Notifier, lease: ConnectionLease) -> None:
        backoff_s = self.poll_interval_s
        settle_wait_s = _FIRST_SETTLE_WAIT_S
        handled_generation = notifier.generation
        while True:
            seen = notifier.generation
            try:
                connection = await lease.connection()
                count = 0
                # A poll (nothing announced since the last look) always reads in full:
                # the cached checkpoint is a hint, and a poll must not trust it.
                is_poll = seen == handled_generation
                if is_poll or await self._may_have_work(connection):
                    count = await self._process_batch_on(connection)
                backoff_s = self.poll_interval_s
            except self.transient_errors as error:
                await lease.release()  # it may be the connection that failed
                _log.warning("subscription %s: %s; retry in %.1fs", self.name, error, backoff_s)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, _MAX_BACKOFF_S)
                continue
            if count >= self.batch_size:
                continue
            is_settled = count > 0 or seen == handled_generation
            if is_settled or settle_wait_s >= self.poll_interval_s:
                handled_generation = seen
                settle_wait_s = _FIRST_SETTLE_WAIT_S
                if notifier.generation == seen:
                    await lease.release()  # idle: the pool's other users may have it
                await notifier.wait_past(seen, self.poll_interval_s)
            else:
                # Announced appends are not settled yet (an older transaction is still
                # open): look again at the next commit, which is often that transaction's
                # own, or soon anyway, rather than at the next poll.
                await notifier.wait_past(notifier.generation, settle_wait_s)
                settle_wait_s *= 2
