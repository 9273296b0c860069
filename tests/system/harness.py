"""The whole ledger running in the test process, reached over real HTTP and real NATS.

`SystemUnderTest` holds one `ServiceHost` with all four services (as `ledger up` runs them)
and its FastAPI app served by uvicorn on a free loopback port; clients talk to it with
httpx over TCP. It lives on the test session's event loop. Hypothesis rules are plain
functions, so the state machine runs in a worker thread and hands each coroutine to that
loop with `SystemUnderTest.run` (the loop keeps serving the host meanwhile).

The light faults of the state machine are here too: cancel the saga orchestrator's task and
start a fresh orchestrator (a crashed worker, another instance taking over after its
lease), and stop and start the whole host (every service, relay and consumer).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Coroutine
from typing import Any, Final, TypeVar

import httpx
import uvicorn
from pydantic import SecretStr

from eventstore import EventStore
from ledger.auth import Scope, TokenSigner
from ledger.embedded import free_port
from ledger.host import ServiceHost
from ledger.http import create_app
from ledger.services import available_services
from ledger.settings import Settings
from saga import Orchestrator

T = TypeVar("T")

USD: Final = "USD"
ACME: Final = "ACME"
"""The two assets of the system tests: a currency (2 decimals) and an instrument (0)."""
REQUEST_TIMEOUT_S: Final = 60.0
RUN_TIMEOUT_S: Final = 180.0
"""The longest one step of a test may take on the loop before the test fails (a hang)."""
ORCHESTRATOR_TASK: Final = "saga:orchestrator"
TOKEN_TTL_S: Final = 24 * 3600


def system_settings(database_url: str, nats_url: str) -> Settings:
    """Settings of the system under test: its own schemas, ACME as an instrument, quick saga
    retries (a step that is not answered is tried again soon, an orchestrator that died is
    replaced after a short lease; the retries still outlast risk's wait for its view of
    accounts, one subscription poll interval; messages a restarted consumer had fetched
    come back after a short ack wait), a token secret of its own, and no rate limit (the
    tests' clients are one subject that sends far more than a customer would)."""
    return Settings(
        database_url=database_url, nats_url=nats_url, schema_prefix=f"sys{secrets.token_hex(4)}_",
        instrument_scales={ACME: 0}, saga_step_timeout_s=3.0, saga_step_max_attempts=5,
        saga_backoff_first_s=0.1, saga_backoff_max_s=1.0, saga_lease_s=4.0,
        subscription_poll_interval_s=0.25, consumer_ack_wait_s=5.0,
        saga_poll_interval_s=0.05, task_restart_first_s=0.1, task_restart_max_s=1.0,
        shutdown_grace_s=5.0, log_level="WARNING", log_json=False,
        auth_jwt_secret=SecretStr(secrets.token_urlsafe(32)), rate_limit_per_s=0,
    )  # fmt: skip


def admin_headers(settings: Settings) -> dict[str, str]:
    """The headers that authenticate a client as an administrator (every client of these
    tests is made by `client_of` with them: the one place a token is added)."""
    token = TokenSigner.from_settings(settings).issue("system-tests", [Scope.ADMIN],
                                                      ttl_s=TOKEN_TTL_S)  # fmt: skip
    return {"Authorization": f"Bearer {token}"}


class SystemUnderTest:
    """All four services in one host, their app on a loopback port, and an HTTP client."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.host = ServiceHost(settings, list(available_services().values()))
        self.loop: asyncio.AbstractEventLoop | None = None
        self.client: httpx.AsyncClient | None = None
        self.base_url = ""
        self.restarts = {"orchestrator": 0, "host": 0}

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[SystemUnderTest]:
        """Start the host and the HTTP server for the block; stop both after it."""
        self.loop = asyncio.get_running_loop()
        await self.host.start()
        try:
            port = free_port()
            server = uvicorn.Server(uvicorn.Config(
                create_app(self.host, manage_host=False), host="127.0.0.1", port=port,
                lifespan="off", log_level="warning", access_log=False, ws="none",
            ))  # fmt: skip
            serving = asyncio.create_task(server.serve())
            try:
                while not server.started:  # uvicorn offers no event to wait on
                    if serving.done():
                        await serving
                        raise RuntimeError("uvicorn stopped before it started")
                    await asyncio.sleep(0.01)
                self.base_url = f"http://127.0.0.1:{port}"
                async with client_of(self.base_url, self.settings, connections=64) as client:
                    self.client = client
                    yield self
            finally:
                self.client = None
                server.should_exit = True
                await serving
        finally:
            await self.host.stop()

    def run(self, work: Coroutine[Any, Any, T], timeout_s: float = RUN_TIMEOUT_S) -> T:
        """Run `work` on the system's loop from another thread (a hypothesis rule) and
        return its result; its exception is raised here."""
        assert self.loop is not None, "the system is serving"
        future = asyncio.run_coroutine_threadsafe(work, self.loop)
        try:
            return future.result(timeout_s)
        except TimeoutError:
            future.cancel()
            raise

    def http(self) -> httpx.AsyncClient:
        """The shared client (for use on the system's loop)."""
        assert self.client is not None, "the system is serving"
        return self.client

    def store(self, service: str) -> EventStore:
        """The event store of `service` in the running host."""
        return self.host.runtimes[service].store

    async def restart_orchestrator(self) -> None:
        """Cancel the orchestrator's task mid-whatever and start a fresh orchestrator (a new
        owner: sagas the old one held are taken over when their lease ends)."""
        runtime = self.host.runtimes["saga"]
        tasks = [t for t in asyncio.all_tasks() if t.get_name() == ORCHESTRATOR_TASK]
        assert len(tasks) == 1, f"one orchestrator task runs, found {len(tasks)}"
        tasks[0].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        fresh = Orchestrator(runtime.store, runtime.nc, runtime.settings)
        runtime.spawn(fresh.run, "orchestrator")
        self.restarts["orchestrator"] += 1

    async def restart_host(self) -> None:
        """Stop every service (commands, consumers, relays, the orchestrator) and start
        them again, as a redeploy would; the HTTP server stays up meanwhile."""
        await self.host.stop()
        await self.host.start()
        self.restarts["host"] += 1


@contextlib.asynccontextmanager
async def client_of(base_url: str, settings: Settings, *, connections: int = 16
                    ) -> AsyncIterator[httpx.AsyncClient]:  # fmt: skip
    """An HTTP client of the system, with the authentication every request needs."""
    # Idle connections are dropped well before uvicorn's keep-alive timeout (5 s) closes them
    # from its side: a request sent on a connection the server is closing fails (ReadError).
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections,
                          keepalive_expiry=1.0)  # fmt: skip
    async with httpx.AsyncClient(base_url=base_url, headers=admin_headers(settings), limits=limits,
                                 timeout=REQUEST_TIMEOUT_S) as client:  # fmt: skip
        yield client
