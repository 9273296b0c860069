"""`ledger up` as a real process on the session's servers: it serves every API on its port,
and Ctrl-C (SIGINT) stops it cleanly. And bad arguments, for several commands, are one
clear line and exit code 2.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import nats
import pytest
from typer.testing import CliRunner, Result

from ledger.cli import app
from ledger.embedded import free_port
from ledger.services import available_services
from ledger.settings import Settings

LEDGER = Path(sys.executable).with_name("ledger")
"""The console script, as installed by `pip install -e .`."""
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 60.0
_BOX = "│╭╮╰╯─ "


@pytest.fixture
def settings(database_url: str, nats_url: str) -> Settings:
    return Settings(database_url=database_url, nats_url=nats_url,
                    schema_prefix=f"u{secrets.token_hex(4)}_")  # fmt: skip


@contextlib.contextmanager
def ledger(
    args: list[str], env: dict[str, str], log_dir: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`ledger <args>` as a process, its output in `log_dir`; killed if the test left it
    running."""
    with (log_dir / "stdout").open("wb") as stdout, (log_dir / "stderr").open("wb") as stderr:
        process = subprocess.Popen([str(LEDGER), *args], env=env, stdout=stdout, stderr=stderr)
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def ledger_up(settings: Settings, port: int, log_dir: Path
              ) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:  # fmt: skip
    """`ledger up --port <port>` on the given servers."""
    env = {**os.environ, "LEDGER_DATABASE_URL": str(settings.database_url),
           "LEDGER_NATS_URL": str(settings.nats_url),
           "LEDGER_SCHEMA_PREFIX": settings.schema_prefix, "LEDGER_LOG_LEVEL": "WARNING",
           "LEDGER_AUTH_JWT_SECRET": secrets.token_urlsafe(32)}  # fmt: skip
    return ledger(["up", "--port", str(port), "--data-dir", str(log_dir / "data")], env, log_dir)


def wait_ready(process: subprocess.Popen[bytes], url: str, log_dir: Path) -> httpx.Response:
    """Poll `/health/ready` until it answers 200; fail if the process ends or never is."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        assert process.poll() is None, (log_dir / "stderr").read_text()
        try:
            response = httpx.get(f"{url}/health/ready", timeout=5)
            if response.status_code == 200:
                return response
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, (log_dir / "stderr").read_text()
        time.sleep(0.2)


async def drop(settings: Settings, pool: asyncpg.Pool) -> None:
    """The run's schemas and durable consumers (they outlive a process by design)."""
    for name in available_services():
        await pool.execute(f"drop schema if exists {settings.schema_for(name)} cascade")
    connection = await nats.connect(settings.nats_servers)
    try:
        js = connection.jetstream()
        for info in await js.consumers_info(settings.events_stream):
            if info.name and info.name.startswith(settings.schema_prefix):
                await js.delete_consumer(settings.events_stream, info.name)
    finally:
        await connection.close()


@pytest.fixture
async def cleaned(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[Settings]:
    yield settings
    await drop(settings, pool)


def test_up_serves_every_api_and_stops_cleanly_on_ctrl_c(
    cleaned: Settings, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    with ledger_up(cleaned, port, tmp_path) as process:
        ready = wait_ready(process, url, tmp_path)
        docs = httpx.get(f"{url}/docs", timeout=10)
        openapi = httpx.get(f"{url}/openapi.json", timeout=10).json()
        process.send_signal(signal.SIGINT)
        exit_code = process.wait(timeout=STOP_TIMEOUT_S)

    stderr = (tmp_path / "stderr").read_text()
    assert ready.json()["status"] == "ready"
    assert all(ready.json()["checks"].values())
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
    for path in ("/v1/accounts", "/v1/risk/decisions", "/v1/transfers", "/v1/sagas"):
        assert path in openapi["paths"]
    assert exit_code == 0, stderr
    assert f"on {url}" in stderr
    assert "Ctrl-C" in stderr
    assert "ledger stopped" in stderr
    assert "Traceback" not in stderr


RUNNER = CliRunner()


def invoke(*args: str) -> Result:
    return RUNNER.invoke(app, list(args), env={"COLUMNS": "200"})


def error_message(result: Result) -> str:
    """The one line of error a usage failure printed, however typer frames it (a box, after
    the usage and a hint)."""
    lines = [line.strip(_BOX) for line in result.stderr.splitlines()]
    message = [line for line in lines if line and line != "Error"
               and not line.startswith(("Usage:", "Try '"))]  # fmt: skip
    assert len(message) == 1, result.stderr
    return message[0]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["serve", "bank"], "unknown service 'bank' (known: account, risk, saga, trade)"),
        (["serve"], "Missing argument"),
        (["up", "--port", "0"], "'--port'"),
        (["up", "--port", "65536"], "'--port'"),
        (["up", "--port", "eighty"], "'--port'"),
        (["up", "--bogus"], "No such option: --bogus"),
        (["sagas", "list", "--bogus"], "No such option: --bogus"),
        (["sagas", "list", "--status", "asleep"], "'--status'"),
        (["sagas", "show"], "Missing argument"),
        (["sagas", "retry", "a/b"], "'a/b' is not a saga id"),
        (["sagas", "frobnicate"], "No such command 'frobnicate'"),
        (["demo", "--url", "example.com"], "'example.com' is not an http:// or https:// URL"),
    ],
)  # fmt: skip
def test_bad_arguments_are_one_clear_line_and_exit_2(args: list[str], says: str) -> None:
    result = invoke(*args)

    assert result.exit_code == 2, result.output
    assert says in error_message(result)
    assert result.stdout == ""


def test_sigterm_stops_up_and_its_embedded_servers(tmp_path: Path) -> None:
    # uvicorn raised SIGTERM again after its shutdown, with the default handler: the
    # process died there, and the embedded PostgreSQL and nats-server ran on as orphans.
    port, data_dir = free_port(), tmp_path / "data"
    env = {name: value for name, value in os.environ.items()
           if name not in {"LEDGER_DATABASE_URL", "LEDGER_NATS_URL"}}  # fmt: skip
    env.update({"LEDGER_LOG_LEVEL": "WARNING",
                "LEDGER_AUTH_JWT_SECRET": secrets.token_urlsafe(32)})  # fmt: skip
    with ledger(["up", "--port", str(port), "--data-dir", str(data_dir)], env, tmp_path
                ) as process:  # fmt: skip
        wait_ready(process, f"http://127.0.0.1:{port}", tmp_path)
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(timeout=STOP_TIMEOUT_S)

    left = processes_using(data_dir)
    for pid in left:  # a failing run must not leave its orphans to the next test
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    stderr_text = (tmp_path / "stderr").read_text()
    assert exit_code == 0, stderr_text
    assert "ledger stopped" in stderr_text
    assert "Traceback" not in stderr_text
    assert left == []


def processes_using(data_dir: Path) -> list[int]:
    """The processes whose command line names `data_dir` (embedded servers left behind)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if str(data_dir).encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_serve_waiting_for_nats_stops_on_a_signal(
    database_url: str, tmp_path: Path, stop: signal.Signals
) -> None:
    # The first NATS connection waits until a server answers, and uvicorn does not cancel
    # a startup: SIGTERM and Ctrl-C were ignored for as long as it waited (for ever).
    env = {**os.environ, "LEDGER_DATABASE_URL": database_url,
           "LEDGER_NATS_URL": f"nats://127.0.0.1:{free_port()}",  # nobody listens there
           "LEDGER_AUTH_JWT_SECRET": secrets.token_urlsafe(32), "LEDGER_LOG_LEVEL": "WARNING"}
    with ledger(["serve", "account", "--port", str(free_port())], env, tmp_path) as process:
        # Signalled once it is waiting for NATS, not after a fixed sleep: on a loaded
        # machine the process may still be importing then, before any handler is set.
        deadline = time.monotonic() + START_TIMEOUT_S
        while "Connection refused" not in (tmp_path / "stderr").read_text():
            assert process.poll() is None, (tmp_path / "stderr").read_text()
            assert time.monotonic() < deadline, "never waited for NATS"
            time.sleep(0.1)
        process.send_signal(stop)
        exit_code = process.wait(timeout=STOP_TIMEOUT_S)

    stderr_text = (tmp_path / "stderr").read_text()
    assert exit_code == 0, stderr_text
    assert "stopped while starting" in stderr_text
    assert "Traceback" not in stderr_text
