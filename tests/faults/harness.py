"""The fault tests' harness: the ledger's four services as separate `ledger serve` processes.

A `ServiceProcess` is one service in its own process and session, so a signal reaches it
alone: started, stopped (SIGTERM), killed (SIGKILL), paused (SIGSTOP) and resumed (SIGCONT)
by the test, its output kept in a log file under the test's directory. A `LedgerProcesses`
is the four of them against one PostgreSQL and one NATS (or a cluster's seed list), under a
schema prefix of their own, with short timeouts so faults heal in seconds. The HTTP client
the tests use is built in one place, `Api`, so that a bearer token is added there alone.
The load generator lives in `tests/faults/load.py`, the quiescence wait and the invariant
checks in `tests/faults/invariants.py`.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
from pydantic import SecretStr

from ledger.auth import Scope, TokenSigner
from ledger.embedded import free_port
from ledger.settings import Settings

SERVICES: Final = ("account", "risk", "trade", "saga")
READY_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 15.0
TOKEN_TTL_S: Final = 3600
_READY_POLL_S: Final = 0.1
_LOG_TAIL_LINES: Final = 30
_ROUTES: Final = {"/v1/accounts": "account", "/v1/risk": "risk", "/v1/transfers": "trade",
                  "/v1/trades": "trade", "/v1/sagas": "saga"}  # fmt: skip

FAST_SETTINGS: Final[Mapping[str, str]] = {
    # Faults must heal in seconds, not in the production defaults' minutes.
    "LEDGER_COMMAND_TIMEOUT_S": "1",
    "LEDGER_SAGA_STEP_TIMEOUT_S": "1",
    "LEDGER_SAGA_LEASE_S": "4",
    "LEDGER_SAGA_BACKOFF_FIRST_S": "0.2",
    "LEDGER_SAGA_BACKOFF_MAX_S": "1",
    "LEDGER_SAGA_STEP_MAX_ATTEMPTS": "5",  # the default: some sagas give up and compensate
    "LEDGER_CONSUMER_ACK_WAIT_S": "5",
    "LEDGER_CONSUMER_BACKOFF_S": "[0.2, 0.5, 1]",
    "LEDGER_RELAY_ACK_TIMEOUT_S": "2",
    "LEDGER_TASK_RESTART_FIRST_S": "0.2",
    "LEDGER_TASK_RESTART_MAX_S": "2",
    "LEDGER_SHUTDOWN_GRACE_S": "2",
    "LEDGER_DB_POOL_SIZE": "5",
    "LEDGER_LOG_JSON": "false",
    "LEDGER_LOG_LEVEL": "INFO",
}


def _ledger_command() -> list[str]:
    """The `ledger` console script of this interpreter, else the CLI run through it."""
    script = Path(sys.executable).parent / "ledger"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from ledger.cli import main; main()"]


class ServiceProcess:
    """One `ledger serve <service>` process on a fixed port (kept across restarts)."""

    def __init__(self, service: str, env: Mapping[str, str], log_path: Path) -> None:
        self.service = service
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._env = {**env, "LEDGER_HTTP_PORT": str(self.port)}
        self._process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def pid(self) -> int:
        """The running process's id."""
        assert self._process is not None, f"{self.service} is not started"
        return self._process.pid

    @property
    def is_running(self) -> bool:
        """True while the process exists (a paused one too)."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Spawn the process; `wait_ready` tells when it serves."""
        assert not self.is_running, f"{self.service} runs already"
        self._reap()
        with self.log_path.open("ab") as log:
            log.write(f"\n=== start #{self.starts + 1} of {self.service} ===\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                [*_ledger_command(), "serve", self.service, "--port", str(self.port)],
                env=self._env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL: the process dies at once, mid-whatever, and is reaped."""
        if self._process is None:
            return
        if self._process.poll() is None:
            os.kill(self._process.pid, signal.SIGKILL)
        self._process.wait()

    def stop(self) -> None:
        """SIGTERM (a paused process is resumed first), SIGKILL after STOP_TIMEOUT_S."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._reap()

    def pause(self) -> None:
        """SIGSTOP: the process stops answering anything until `resume`."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after `pause`."""
        os.kill(self.pid, signal.SIGCONT)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines of the process's output, for a failure's message."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    async def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> float:
        """Seconds until `/health/ready` answered 200; AssertionError (with the log's tail)
        if the process exits or is not ready in time."""
        started_s = time.monotonic()
        async with httpx.AsyncClient(base_url=self.url, timeout=2.0) as client:
            while time.monotonic() - started_s < timeout_s:
                if not self.is_running:
                    raise AssertionError(f"{self.service} exited:\n{self.log_tail()}")
                try:
                    if (await client.get("/health/ready")).status_code == 200:
                        return time.monotonic() - started_s
                except httpx.TransportError:
                    pass
                await asyncio.sleep(_READY_POLL_S)
        raise AssertionError(f"{self.service} not ready in {timeout_s:.0f} s:\n{self.log_tail()}")

    def _reap(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            self._process = None


@dataclass(frozen=True)
class Servers:
    """Where the processes find PostgreSQL and NATS."""

    database_url: str
    nats_url: str
    """One URL, or a cluster's seed URLs comma-separated."""


class LedgerProcesses:
    """The four services as processes under one schema prefix, and an `Api` to reach them."""

    def __init__(
        self, servers: Servers, work_dir: Path, *, extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.servers = servers
        self.schema_prefix = f"f{secrets.token_hex(4)}_"
        self.auth_secret = secrets.token_urlsafe(32)
        env = {name: value for name, value in os.environ.items()
               if not name.startswith("LEDGER_")}  # fmt: skip
        env.update(FAST_SETTINGS)
        env.update({
            "LEDGER_DATABASE_URL": servers.database_url,
            "LEDGER_NATS_URL": servers.nats_url,
            "LEDGER_SCHEMA_PREFIX": self.schema_prefix,
            "LEDGER_HTTP_HOST": "127.0.0.1",
            "LEDGER_AUTH": "on",
            "LEDGER_AUTH_JWT_SECRET": self.auth_secret,
            **(extra_env or {}),
        })  # fmt: skip
        self.env: Mapping[str, str] = env
        work_dir.mkdir(parents=True, exist_ok=True)
        self.processes = {name: ServiceProcess(name, env, work_dir / f"{name}.log")
                          for name in SERVICES}  # fmt: skip
        self.api = Api({name: process.url for name, process in self.processes.items()},
                       admin_token(self.auth_secret))  # fmt: skip

    def __getitem__(self, service: str) -> ServiceProcess:
        return self.processes[service]

    def schema(self, service: str) -> str:
        """The PostgreSQL schema of `service` in this ledger."""
        return f"{self.schema_prefix}{service}"

    async def start(self) -> float:
        """Start every service at once; seconds until all were ready."""
        started_s = time.monotonic()
        # Each migrates its own schema; all of them create or update the NATS streams,
        # which bus.ensure_streams makes safe for replicas that start together.
        for process in self.processes.values():
            if not process.is_running:
                process.start()
        await asyncio.gather(*(p.wait_ready() for p in self.processes.values()))
        return time.monotonic() - started_s

    async def ensure_running(self) -> None:
        """Bring back any process a failed test left dead or paused."""
        for process in self.processes.values():
            if process.is_running:
                process.resume()
            else:
                process.start()
        await asyncio.gather(*(p.wait_ready() for p in self.processes.values()))

    async def wait_all_ready(self) -> float:
        """Seconds until every process answers ready again (after a server came back)."""
        started_s = time.monotonic()
        await asyncio.gather(*(p.wait_ready() for p in self.processes.values()))
        return time.monotonic() - started_s

    async def restart(self, service: str) -> float:
        """Start `service` again after a kill; seconds until it is ready."""
        process = self.processes[service]
        process.start()
        return await process.wait_ready()

    def stop(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL)."""
        for process in self.processes.values():
            process.stop()

    def log_tails(self) -> str:
        """Every process's last lines, for a failure's message."""
        return "\n".join(f"--- {name} ---\n{process.log_tail()}"
                         for name, process in self.processes.items())  # fmt: skip


def admin_token(secret: str) -> str:
    """An admin bearer token signed with `secret` (the processes' LEDGER_AUTH_JWT_SECRET)."""
    settings = Settings(auth_jwt_secret=SecretStr(secret))
    return TokenSigner.from_settings(settings).issue("fault-tests", [Scope.ADMIN],
                                                     ttl_s=TOKEN_TTL_S)  # fmt: skip


class Api:
    """The HTTP client of the fault tests: each path goes to the service that serves it,
    every request carries the bearer token."""

    def __init__(self, urls: Mapping[str, str], token: str, timeout_s: float = 10.0) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        self._clients = {
            service: httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout_s)
            for service, url in urls.items()
        }

    def _client(self, path: str) -> httpx.AsyncClient:
        for prefix, service in _ROUTES.items():
            if path.startswith(prefix):
                return self._clients[service]
        raise AssertionError(f"no service serves {path}")

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        """GET `path` from the service that serves it."""
        return await self._client(path).get(path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> httpx.Response:
        """POST to `path` on the service that serves it."""
        return await self._client(path).post(path, **kwargs)

    async def aclose(self) -> None:
        """Close every connection."""
        for client in self._clients.values():
            await client.aclose()
