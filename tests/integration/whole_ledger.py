"""The whole ledger for a test module: every service on the session's servers, in schemas of
its own, in process or as a real `ledger up` process, and what to drop afterwards. Tokens
for it: `tests.integration.authorized`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO, Final

import asyncpg
import httpx
import nats
from pydantic import SecretStr

from ledger.embedded import free_port
from ledger.services import available_services
from ledger.settings import Settings

LEDGER: Final = Path(sys.executable).with_name("ledger")
"""The console script, as installed by `pip install -e .`."""
START_LIMIT_S: Final = 120.0
STOP_LIMIT_S: Final = 60.0
_DURABLES: Final = ("risk-accounts", "trade-steps", "saga-starter")
"""The durable consumers the services create, each named after its schema."""


def ledger_settings(database_url: str, nats_url: str, schema_prefix: str) -> Settings:
    """Settings for a whole ledger of its own: its schemas, a fresh token secret, no rate
    limit (a test sends requests faster than any client is allowed to), and an instrument."""
    return Settings(
        database_url=database_url, nats_url=nats_url, schema_prefix=schema_prefix,
        auth_jwt_secret=SecretStr(secrets.token_urlsafe(32)), rate_limit_per_s=0,
        instrument_scales={"ACME": 0},
    )  # fmt: skip


@contextlib.asynccontextmanager
async def ledger_up(settings: Settings, log_dir: Path) -> AsyncIterator[str]:
    """`ledger up` as a process of its own, configured as `settings` are; yield its URL once
    it is ready, stop it with Ctrl-C (SIGINT), then `forget` what it left."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        with _log_file(log_dir) as stderr:
            process = await asyncio.create_subprocess_exec(
                str(LEDGER), "up", "--port", str(port), "--data-dir", str(log_dir / "data"),
                env={**os.environ, **_environment(settings)}, stdout=subprocess.DEVNULL,
                stderr=stderr,
            )  # fmt: skip
            try:
                await _ready(process, url, log_dir)
                yield url
            finally:
                await _stop(process)
    finally:
        await forget(settings)


def _log_file(log_dir: Path) -> BinaryIO:
    return (log_dir / "stderr").open("wb")


def _log(log_dir: Path) -> str:
    return (log_dir / "stderr").read_text()


def _environment(settings: Settings) -> dict[str, str]:
    assert settings.auth_jwt_secret is not None, "tokens are signed with the secret"
    return {
        "LEDGER_DATABASE_URL": str(settings.database_url),
        "LEDGER_NATS_URL": str(settings.nats_url),
        "LEDGER_SCHEMA_PREFIX": settings.schema_prefix,
        "LEDGER_AUTH_JWT_SECRET": settings.auth_jwt_secret.get_secret_value(),
        "LEDGER_RATE_LIMIT_PER_S": str(settings.rate_limit_per_s),
        "LEDGER_INSTRUMENT_SCALES": json.dumps(settings.instrument_scales),
        "LEDGER_LOG_LEVEL": "WARNING",
    }


async def _ready(process: asyncio.subprocess.Process, url: str, log_dir: Path) -> None:
    """Until `/health/ready` answers 200; fails if the process ends or never is ready."""
    deadline_s = asyncio.get_running_loop().time() + START_LIMIT_S
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        while True:
            assert process.returncode is None, _log(log_dir)
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/health/ready")).status_code == 200:
                    return
            assert asyncio.get_running_loop().time() < deadline_s, _log(log_dir)
            await asyncio.sleep(0.2)


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(process.wait(), STOP_LIMIT_S)
        except TimeoutError:
            process.kill()
            await process.wait()


async def forget(settings: Settings) -> None:
    """Drop what a whole ledger left on the servers: its schemas and durable consumers."""
    connection = await asyncpg.connect(settings.database_url)
    try:
        for name in available_services():
            await connection.execute(f"drop schema if exists {settings.schema_for(name)} cascade")
    finally:
        await connection.close()
    nc = await nats.connect(settings.nats_servers)
    try:
        for durable in _DURABLES:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await nc.jetstream().delete_consumer(
                    settings.events_stream, f"{settings.schema_prefix}{durable}"
                )
    finally:
        await nc.close()
