"""The whole system for the HTTP benchmarks, in processes of its own, and how to reach it.

    async with running(settings, data_dir, log_dir, per_service=False) as system:
        client = httpx.AsyncClient(transport=system.transport(limits), base_url=system.url)
        trade_port = system.ports["trade"]

Either `ledger up --no-embedded` (every service in one process, as DESIGN.md has one
machine run it) or, with `per_service`, one `ledger serve <service>` process per service,
as production runs them. The clients then reach each service on its own port:
`System.transport` sends each request to the service that serves its path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx

from ledger.embedded import free_port
from ledger.services import available_services
from ledger.settings import Settings

ROUTES: Final = (
    ("/v1/accounts", "account"),
    ("/v1/risk", "risk"),
    ("/v1/transfers", "trade"),
    ("/v1/trades", "trade"),
    ("/v1/sagas", "saga"),
)
"""Which service serves a path, by its prefix (the rest, `/health` say, any of them)."""
_READY_TIMEOUT_S: Final = 120.0
_STOP_TIMEOUT_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class System:
    """The running system: each service's port on `host` (one port for all under `ledger
    up`), and the ids of its processes."""

    host: str
    ports: Mapping[str, int]
    pids: tuple[int, ...]

    @property
    def url(self) -> str:
        """A base URL: the first service's (the transport sends each path where it goes)."""
        return f"http://{self.host}:{next(iter(self.ports.values()))}"

    def port_for(self, path: str) -> int:
        """The port of the service that serves `path`."""
        for prefix, service in ROUTES:
            if path.startswith(prefix):
                return self.ports[service]
        return next(iter(self.ports.values()))

    def transport(self, limits: httpx.Limits) -> httpx.AsyncBaseTransport:
        """An httpx transport that sends each request to the service serving its path."""
        return _Routed(self, httpx.AsyncHTTPTransport(limits=limits))


class _Routed(httpx.AsyncBaseTransport):
    def __init__(self, system: System, inner: httpx.AsyncHTTPTransport) -> None:
        self._system = system
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.url = request.url.copy_with(port=self._system.port_for(request.url.path))
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@contextlib.asynccontextmanager
async def running(
    settings: Settings, data_dir: Path, log_dir: Path, *, per_service: bool,
    host: str = "127.0.0.1",
) -> AsyncIterator[System]:
    """Start the system against the servers `settings` name, each process logging to
    `log_dir/ledger-<service or all>.log`; yield it once every process answers
    `/health/ready`; stop each with SIGINT (Ctrl-C) at the end."""
    services = list(available_services())
    commands = (
        {service: ["serve", service] for service in services}
        if per_service
        else {"all": ["up", "--no-embedded", "--data-dir", str(data_dir / "ledger")]}
    )
    async with contextlib.AsyncExitStack() as stack:
        ports: dict[str, int] = {}
        processes: list[asyncio.subprocess.Process] = []
        async with asyncio.TaskGroup() as readiness:
            for name, command in commands.items():
                port = _unused_port(set(ports.values()))
                log_path = log_dir / f"ledger-{name}.log"
                process = await stack.enter_async_context(
                    _process([*command, "--port", str(port)], _environment(settings), log_path)
                )
                processes.append(process)
                readiness.create_task(_until_ready(process, f"http://{host}:{port}", log_path))
                for service in services if name == "all" else [name]:
                    ports[service] = port
        yield System(host, ports, tuple(process.pid for process in processes))


def _unused_port(taken: set[int]) -> int:
    """A free local port that no process of this system was given yet (none has bound its
    own yet, so the OS could hand out one twice)."""
    while (port := free_port()) in taken:
        pass
    return port


def _environment(settings: Settings) -> dict[str, str]:
    secret = settings.auth_jwt_secret
    assert secret is not None, "the processes check tokens with the benchmark's secret"
    return {
        **os.environ,
        "LEDGER_DATABASE_URL": str(settings.database_url),
        "LEDGER_NATS_URL": ",".join(settings.nats_servers),
        "LEDGER_SCHEMA_PREFIX": settings.schema_prefix,
        "LEDGER_LOG_LEVEL": settings.log_level,
        "LEDGER_AUTH_JWT_SECRET": secret.get_secret_value(),
        "LEDGER_RATE_LIMIT_PER_S": "0",
    }


@contextlib.asynccontextmanager
async def _process(
    arguments: list[str], env: dict[str, str], log_path: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    command = [sys.executable, "-c", "from ledger.cli import main; main()", *arguments]
    with log_path.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            *command, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=output, stderr=output
        )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), timeout=_STOP_TIMEOUT_S)
            except TimeoutError:
                process.kill()
                await process.wait()


async def _until_ready(process: asyncio.subprocess.Process, url: str, log_path: Path) -> None:
    deadline = time.perf_counter() + _READY_TIMEOUT_S
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        while time.perf_counter() < deadline and process.returncode is None:
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/health/ready")).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    what = "exited" if process.returncode is not None else "never became ready"
    raise RuntimeError(f"ledger ({log_path.name}) {what}: {_tail(log_path)}")


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:]
