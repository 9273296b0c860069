"""Stopping never hangs: a cancelled wait ends cancelled, and the host cancels again a task
that swallowed its cancellation.

On Python 3.11 `asyncio.wait_for` returns its awaitable's result instead of raising when
a cancellation arrives as that awaitable completes. A subscription (the relay) waiting
for the next append was cancelled so, ran on, and `ServiceHost.stop` waited for it for ever.
(Found by the system tests: restarting the host while transfers were in flight hung.)
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import asyncpg
import pytest

from eventstore import EventStore
from eventstore.notifier import Notifier
from ledger.host import Runtime, ServiceHost
from ledger.settings import Settings
from tests.integration.notes_service import NotesService

GUARD_S = 20.0
"""Bound of every wait: a guard against hanging, never an assertion."""


async def test_a_wait_cancelled_as_an_append_is_announced_ends_cancelled(
    store: EventStore,
) -> None:
    async with Notifier(store) as notifier:
        waiting = asyncio.create_task(notifier.wait_past(notifier.generation, 30.0))
        await asyncio.sleep(0.01)

        notifier._on_local_append()  # an append announced ...
        waiting.cancel()  # ... as the wait is cancelled, in one turn of the loop

        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(waiting, GUARD_S)


class StubbornNotesService(NotesService):
    """Notes, with a background task that swallows its first cancellation (as a library's
    `wait_for` may) and then waits again."""

    def __init__(self) -> None:
        self.swallowed = 0

    async def start(self, runtime: Runtime) -> None:
        await super().start(runtime)
        runtime.spawn(self.work, "stubborn")

    async def work(self) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.swallowed += 1
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        await asyncio.Event().wait()


async def test_stop_cancels_again_a_task_that_swallowed_its_cancellation(
    database_url: str, nats_url: str, pool: asyncpg.Pool
) -> None:
    settings = Settings(database_url=database_url, nats_url=nats_url,
                        schema_prefix=f"t{uuid.uuid4().hex[:8]}_")  # fmt: skip
    service = StubbornNotesService()
    services: Sequence[StubbornNotesService] = [service]
    host = ServiceHost(settings, services)
    await host.start()
    try:
        await asyncio.sleep(0.05)
        await asyncio.wait_for(host.stop(), GUARD_S)
    finally:
        await host.stop()
        await pool.execute(f"drop schema if exists {settings.schema_for('notes')} cascade")

    assert service.swallowed == 1
