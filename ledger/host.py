"""The service host: what every service runs in, so services hold only domain code.

It opens each service's store (pool and migrations), the shared NATS connection and streams,
runs each service's relay, starts the service's own consumers and command endpoints, and
serves their HTTP routes beside `/health`, `/metrics` and the event streams. `stop` undoes
it in reverse: background work first, then NATS (drained), then the pools.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from fastapi import APIRouter
from nats.aio.client import Client
from nats.js import JetStreamContext

from eventstore import EventStore, EventStoreError, Projection
from eventstore.notifier import Notifier
from ledger import metrics
from ledger.bus import connect, ensure_streams
from ledger.relay import EventRelay, relay_lag_events
from ledger.settings import Settings

_log = logging.getLogger(__name__)
_READY_TIMEOUT_S: Final = 1.0


@dataclass
class Runtime:
    """What the host gives one service: its settings, store, NATS, and a place for tasks."""

    name: str
    settings: Settings
    store: EventStore
    nc: Client
    js: JetStreamContext
    notifier: Notifier
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run `work` in the background until the host stops; a crash is logged and ends it."""
        task = asyncio.create_task(work, name=f"{self.name}:{name}")
        task.add_done_callback(_log_crash)
        self._tasks.append(task)


class Service(Protocol):
    """A domain service as the host sees it."""

    name: str
    categories: tuple[str, ...]
    """The stream categories it owns (`account` for `account-42`)."""

    def inline_projections(self) -> Sequence[Projection]:
        """Read models updated in the append's transaction."""
        ...

    def router(self) -> APIRouter | None:
        """Its HTTP routes (they reach their runtime through `ledger.http.runtime_of`)."""
        ...

    async def start(self, runtime: Runtime) -> None:
        """Start its command endpoints and consumers (spawned on the runtime)."""
        ...

    async def stop(self) -> None:
        """Stop what `start` began that the runtime's tasks do not cover."""
        ...


class ServiceHost:
    """Runs a set of services in one process against the configured servers."""

    def __init__(self, settings: Settings, services: Sequence[Service]) -> None:
        if not settings.nats_servers:
            raise ValueError("the host needs LEDGER_NATS_URL (ledger up fills it in)")
        for service in services:
            if settings.database_url_for(service.name) is None:
                raise ValueError(f"no database URL for the {service.name} service")
        self.settings = settings
        self.services = tuple(services)
        self.runtimes: dict[str, Runtime] = {}
        self.nc: Client | None = None
        self._exit_stack = AsyncExitStack()

    async def start(self) -> None:
        """Connect, migrate, and start every service; undo everything if any step fails."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        stack = self._exit_stack
        self.nc = await connect(self.settings.nats_servers, "ledger")
        stack.push_async_callback(self._close_nats)
        js = self.nc.jetstream()
        await ensure_streams(js, self.settings)
        for service in self.services:
            store = await EventStore.open(
                self._database_url(service),
                self.settings.schema_for(service.name),
                pool_size=self.settings.db_pool_size,
                inline_projections=service.inline_projections(),
            )
            stack.push_async_callback(store.close)
            notifier = await stack.enter_async_context(Notifier(store))
            runtime = Runtime(service.name, self.settings, store, self.nc, js, notifier)
            stack.push_async_callback(_cancel_tasks, runtime)
            self.runtimes[service.name] = runtime
            runtime.spawn(EventRelay(store, js, service.name, self.settings).run(), "relay")
            await service.start(runtime)
            stack.push_async_callback(service.stop)
        _log.info("host started: %s", ", ".join(s.name for s in self.services) or "no services")

    async def stop(self) -> None:
        """Stop services and background work, drain NATS, close the pools. Idempotent."""
        await self._exit_stack.aclose()
        self.runtimes.clear()

    def store_for_stream(self, stream_id: str) -> EventStore | None:
        """The store that owns `stream_id`, by its category."""
        category = stream_id.split("-", 1)[0]
        for service in self.services:
            if category in service.categories and service.name in self.runtimes:
                return self.runtimes[service.name].store
        return None

    def notifier_for(self, store: EventStore) -> Notifier:
        """The shared append notifier of `store`."""
        return next(r.notifier for r in self.runtimes.values() if r.store is store)

    async def readiness(self) -> dict[str, bool]:
        """Whether each dependency answers now: `postgres:<service>` and `nats`."""
        checks = {"nats": self.nc is not None and self.nc.is_connected}
        for name, runtime in self.runtimes.items():
            checks[f"postgres:{name}"] = await _answers(runtime.store)
        return checks

    async def observe(self) -> None:
        """Refresh the gauges that are read, not pushed: each relay's lag in events."""
        for name, runtime in self.runtimes.items():
            try:
                lag = await relay_lag_events(runtime.store)
            except EventStoreError:
                continue  # readiness reports the store; metrics keep the last value
            metrics.relay_lag_events.labels(name).set(lag)

    def _database_url(self, service: Service) -> str:
        url = self.settings.database_url_for(service.name)
        assert url is not None, "checked in __init__"
        return url

    async def _close_nats(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.drain(), timeout=self.settings.shutdown_grace_s)
            if not self.nc.is_closed:
                await self.nc.close()


async def _answers(store: EventStore) -> bool:
    try:
        async with asyncio.timeout(_READY_TIMEOUT_S):
            await store.pool.fetchval("select 1")
    except Exception:  # any failure means "not ready"; the reason is logged, not raised
        _log.warning("readiness: PostgreSQL of %s does not answer", store.schema, exc_info=True)
        return False
    return True


async def _cancel_tasks(runtime: Runtime) -> None:
    for task in runtime._tasks:
        task.cancel()
    await asyncio.gather(*runtime._tasks, return_exceptions=True)
    runtime._tasks.clear()


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _log.error("background task %s crashed", task.get_name(), exc_info=task.exception())


@contextlib.asynccontextmanager
async def running(host: ServiceHost) -> AsyncIterator[ServiceHost]:
    """Start `host` for the block and stop it after."""
    await host.start()
    try:
        yield host
    finally:
        await host.stop()
