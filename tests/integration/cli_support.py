"""Running the `ledger` command line in tests: typer's runner, in a worker thread (each command
runs its own event loop with asyncio.run, while the test's loop may be serving a host), with
the session's servers and a schema prefix of the test's own in the environment."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from typer.testing import CliRunner, Result

from ledger.cli import app
from ledger.settings import SERVICES, Settings

_runner = CliRunner()


@dataclass(frozen=True)
class Cli:
    """The command line, configured for one test's ledger."""

    env: dict[str, str]

    @property
    def settings(self) -> Settings:
        """The settings the commands see."""
        return Settings(
            database_url=self.env["LEDGER_DATABASE_URL"], nats_url=self.env["LEDGER_NATS_URL"],
            schema_prefix=self.env["LEDGER_SCHEMA_PREFIX"],
        )  # fmt: skip

    async def run(self, *args: str, **env: str) -> Result:
        """`ledger *args`, with `env` over the test's environment."""
        return await asyncio.to_thread(
            _runner.invoke, app, list(args), env={**self.env, **env}, catch_exceptions=False
        )

    async def json(self, *args: str, exit_code: int = 0) -> Any:
        """`ledger *args --json`, its output parsed; asserts the exit code."""
        result = await self.run(*args, "--json")
        assert result.exit_code == exit_code, result.output
        return orjson.loads(result.stdout)


def one_error_line(result: Result, *, stdout: bool = False) -> str:
    """The single `error: ...` line a failed command printed on stderr (asserted single);
    nothing on stdout unless `stdout` (a report printed before the verdict)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    assert stdout or result.stdout == "", result.stdout
    return lines[0]


@asynccontextmanager
async def cli_for(
    database_url: str, nats_url: str, pool: asyncpg.Pool, data_dir: Path
) -> AsyncIterator[Cli]:
    """The command line against the session's servers, in schemas of this test alone
    (dropped after it)."""
    prefix = f"c{uuid.uuid4().hex[:10]}_"
    try:
        yield Cli({
            "LEDGER_DATABASE_URL": database_url, "LEDGER_NATS_URL": nats_url,
            "LEDGER_SCHEMA_PREFIX": prefix, "LEDGER_DATA_DIR": str(data_dir),
        })  # fmt: skip
    finally:
        for service in SERVICES:
            await pool.execute(f"drop schema if exists {prefix}{service} cascade")
