"""The service host: what every service runs in, so services hold only domain code.

It opens each service's store (pool and migrations), the shared NATS connection and streams,
runs each service's relay, starts the service's own consumers and command endpoints, and
serves their HTTP routes beside `/health`, `/metrics` and the event streams. `stop` undoes
it in reverse: services and background tasks first, then NATS (drained), then the notifiers
and pools, which the drained messages' handlers may still have needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeAlias

from fastapi import APIRouter
from nats.aio.client import Client
from nats.js import JetStreamContext

from eventstore import EventStore, EventStoreError, Projection
from eventstore.notifier import Notifier
from ledger import metrics
from ledger.bus import NatsSecurity, connect, ensure_streams
from ledger.relay import EventRelay, relay_lag_events
from ledger.settings import Settings
from ledger.shared_recent import SharedRecent

_log = logging.getLogger(__name__)
_READY_TIMEOUT_S: Final = 1.0
_CHECKS_MAX_AGE_S: Final = 1.0
"""How old the databases' readiness or a metrics refresh may be when it answers a request."""
_RECANCEL_AFTER_S: Final = 1.0
_LEAST_STEP_S: Final = 0.5
"""Time each step of a stop gets even when the grace is spent (closing what is left)."""

TaskFactory: TypeAlias = Callable[[], Coroutine[Any, Any, None]]
"""Makes the coroutine of a background task afresh, once per (re)start."""


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
    _is_task_up: dict[str, bool] = field(default_factory=dict)

    def spawn(self, factory: TaskFactory, name: str) -> None:
        """Run `factory()` in the background until the host stops, restarting it after a crash.

        A crash is logged and the task restarts after a pause that doubles from
        `task_restart_first_s` to `task_restart_max_s`; until then it is down (readiness
        check `task:<service>:<name>`, gauge `ledger_background_task_up`). Returning ends it.
        """
        task_name = f"{self.name}:{name}"
        assert task_name not in self._is_task_up, f"task {task_name} is spawned twice"
        self._is_task_up[task_name] = True
        task = asyncio.create_task(self._supervise(factory, task_name), name=task_name)
        self._tasks.append(task)

    def task_health(self) -> dict[str, bool]:
        """Whether each background task still running is up (False: waiting to restart)."""
        return dict(self._is_task_up)

    async def _supervise(self, factory: TaskFactory, task_name: str) -> None:
        first_pause_s = self.settings.task_restart_first_s
        max_pause_s = max(self.settings.task_restart_max_s, first_pause_s)
        pause_s = first_pause_s
        is_up = metrics.background_task_up.labels(task_name)
        try:
            while True:
                self._is_task_up[task_name] = True
                is_up.set(1)
                started_s = time.monotonic()
                try:
                    await factory()
                except Exception:  # CancelledError is not one: cancellation ends the task
                    if time.monotonic() - started_s >= max_pause_s:
                        pause_s = first_pause_s  # it had been healthy; start backing off anew
                    self._is_task_up[task_name] = False
                    is_up.set(0)
                    _log.exception("background task %s crashed; restart in %.1fs",
                                   task_name, pause_s)  # fmt: skip
                    await asyncio.sleep(pause_s)
                    pause_s = min(pause_s * 2, max_pause_s)
                    continue
                _log.info("background task %s finished", task_name)
                return
        finally:
            is_up.set(0)
            self._is_task_up.pop(task_name, None)


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
        self.is_stopping = asyncio.Event()
        """Set when `stop` begins: long-lived responses (event streams) end on it."""
        # Closed in this order by `stop`: services and their tasks, then NATS, then resources.
        self._work = AsyncExitStack()
        self._resources = AsyncExitStack()
        self._stop_deadline = 0.0
        """When `stop`'s grace ends, on the loop's clock."""
        self._databases_answer = SharedRecent(self._ask_databases, _CHECKS_MAX_AGE_S)
        self._observed = SharedRecent(self._observe_now, _CHECKS_MAX_AGE_S)

    async def start(self) -> None:
        """Connect, migrate, and start every service; undo everything if any step fails."""
        self.is_stopping.clear()
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        self.nc = await connect(
            self.settings.nats_servers, "ledger", NatsSecurity.from_settings(self.settings)
        )
        js = self.nc.jetstream()
        await ensure_streams(js, self.settings)
        for service in self.services:
            store = await EventStore.open(
                self._database_url(service),
                self.settings.schema_for(service.name),
                pool_size=self.settings.db_pool_size,
                inline_projections=service.inline_projections(),
            )
            self._resources.push_async_callback(self._close_store, store)
            notifier = await Notifier(store).open()
            self._resources.push_async_callback(
                self._within_grace, f"the notifier of {service.name}", notifier.close
            )
            runtime = Runtime(service.name, self.settings, store, self.nc, js, notifier)
            self._work.push_async_callback(self._within_grace, f"the tasks of {service.name}",
                                           functools.partial(_cancel_tasks, runtime))  # fmt: skip
            self.runtimes[service.name] = runtime
            runtime.spawn(functools.partial(_relay, store, self.nc, service.name, self.settings,
                                            notifier), "relay")  # fmt: skip
            await service.start(runtime)
            self._work.push_async_callback(self._within_grace, f"{service.name} stopping",
                                           service.stop)  # fmt: skip
        _log.info("host started: %s", ", ".join(s.name for s in self.services) or "no services")

    async def stop(self) -> None:
        """Stop services and background tasks, drain NATS, close the pools, all within
        `shutdown_grace_s` (each step gets at least a little time). Idempotent."""
        self._stop_deadline = asyncio.get_running_loop().time() + self.settings.shutdown_grace_s
        self.is_stopping.set()
        try:
            await self._work.aclose()
        finally:
            try:
                await self._close_nats()
            finally:
                await self._resources.aclose()
                self.runtimes.clear()

    async def _within_grace(self, what: str, step: Callable[[], Awaitable[None]]) -> None:
        """Run one step of `stop`; abandon it, with a warning, if it outlives the grace.

        A step stuck on a peer that never answers must not keep the process, or the steps
        after it (draining NATS, closing the pools), from ending; work it leaves undone is
        what a crash leaves, which every consumer and saga already recovers from.
        """
        grace_s = self._grace_left_s()
        try:
            async with asyncio.timeout(grace_s):
                await step()
        except TimeoutError:
            _log.warning("stopping: %s did not finish within %.1fs; going on", what, grace_s)

    def _grace_left_s(self) -> float:
        """What is left of the stop's grace, but never less than a step's least time."""
        left_s = self._stop_deadline - asyncio.get_running_loop().time()
        return max(left_s, min(_LEAST_STEP_S, self.settings.shutdown_grace_s))

    async def _close_store(self, store: EventStore) -> None:
        await store.close(grace_s=self._grace_left_s())

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
        """Whether each dependency answers (`postgres:<service>`, `nats`) and each background
        task runs (`task:<service>:<name>`). The databases' answers are at most
        `_CHECKS_MAX_AGE_S` old: the route is public, and a flood of probes must not become a
        flood of queries."""
        databases = await self._databases_answer.get()
        checks = {"nats": self.nc is not None and self.nc.is_connected}
        for name, runtime in self.runtimes.items():
            checks[f"postgres:{name}"] = databases.get(name, False)
            for task_name, is_up in runtime.task_health().items():
                checks[f"task:{task_name}"] = is_up
        return checks

    async def _ask_databases(self) -> dict[str, bool]:
        """Whether each service's PostgreSQL answers now."""
        return {name: await _answers(runtime.store) for name, runtime in self.runtimes.items()}

    async def observe(self) -> None:
        """Refresh the gauges that are read, not pushed (each relay's lag in events), unless
        they were refreshed less than `_CHECKS_MAX_AGE_S` ago (`/metrics` is public)."""
        await self._observed.get()

    async def _observe_now(self) -> None:
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
        nc = self.nc
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):  # closed or draining already: close it anyway
                await self._within_grace("draining NATS", nc.drain)
            if not nc.is_closed:
                await self._within_grace("closing NATS", nc.close)


async def _answers(store: EventStore) -> bool:
    try:
        async with asyncio.timeout(_READY_TIMEOUT_S):
            await store.pool.fetchval("select 1")
    except Exception:  # any failure means "not ready"; the reason is logged, not raised
        _log.warning("readiness: PostgreSQL of %s does not answer", store.schema, exc_info=True)
        return False
    return True


async def _cancel_tasks(runtime: Runtime) -> None:
    # Cancel again whatever still runs after a moment: on Python 3.11 asyncio.wait_for (in
    # nats-py too) swallows a cancellation that arrives as its awaitable completes.
    pending = {task for task in runtime._tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=_RECANCEL_AFTER_S)
    await asyncio.gather(*runtime._tasks, return_exceptions=True)
    runtime._tasks.clear()


async def _relay(
    store: EventStore, nc: Client, service: str, settings: Settings, notifier: Notifier
) -> None:
    """Run a fresh relay of `service`'s events (a restart after a crash starts clean), woken
    by the store's shared notifier."""
    await EventRelay(store, nc, service, settings).run(notifier)


@contextlib.asynccontextmanager
async def running(host: ServiceHost) -> AsyncIterator[ServiceHost]:
    """Start `host` for the block and stop it after."""
    await host.start()
    try:
        yield host
    finally:
        await host.stop()
