"""`ledger demo` against a whole ledger served over HTTP by uvicorn on a free port: the real
account, risk and trade services and the orchestrator, on real PostgreSQL and NATS.

Every participant and the trade service serve under names unique to this module, so the
saga starter follows only this module's trade events (other modules share the NATS server).
The command runs through typer's runner in a thread: it runs its own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import nats
import orjson
import pytest
import uvicorn
from fastapi import FastAPI, Request, Response
from pydantic import SecretStr
from starlette.middleware.base import RequestResponseEndpoint
from typer.testing import CliRunner, Result

from ledger.auth import Scope, TokenSigner, TokenVerifier
from ledger.cli import app
from ledger.embedded import free_port
from ledger.host import Service, ServiceHost, running
from ledger.http import create_app
from ledger.settings import Settings
from risk_service.app import RiskService
from saga import Participants, SagaService
from tests.integration.renamed_services import RenamedAccount
from trade_service.app import TradeService

TOKEN = secrets.token_hex(4)
TRADE_SERVICE = f"d{TOKEN}trade"
RISK_SERVICE = f"d{TOKEN}risk"
"""The risk service's name here: it serves its commands under it."""
PARTICIPANTS = Participants(account=f"account-d{TOKEN}", risk=RISK_SERVICE,
                            trade=f"trade-d{TOKEN}")  # fmt: skip
RUNNER = CliRunner()


class _Risk(RiskService):
    """The real risk service under a name of its own: its commands are `<name>.assess`, ..."""

    name = RISK_SERVICE


class _Trade(TradeService):
    """The real trade service under a name of its own (its relay's subjects are unique)."""

    name = TRADE_SERVICE


class Served:
    """The ledger's URL, tokens it accepts, and the Authorization headers it was sent."""

    def __init__(self, url: str, signer: TokenSigner, secret: str) -> None:
        self.url = url
        self.signer = signer
        self.secret = secret
        self.authorizations: list[str | None] = []

    def token(self, *scopes: Scope) -> str:
        return self.signer.issue("cli-demo-test", scopes or (Scope.ADMIN,), ttl_s=600)

    def signer_subject(self, authorization: str | None) -> str:
        """The subject of the bearer token in an Authorization header."""
        assert authorization is not None
        assert authorization.startswith("Bearer ")
        return TokenVerifier.from_settings(
            Settings(auth_jwt_secret=SecretStr(self.secret))
        ).verify(authorization.removeprefix("Bearer ")).subject


@pytest.fixture(scope="module")
async def served(
    database_url: str, nats_url: str, pool: asyncpg.Pool
) -> AsyncIterator[Served]:
    secret = secrets.token_urlsafe(32)
    settings = Settings(database_url=database_url, nats_url=nats_url,
                        schema_prefix=f"d{TOKEN}_", saga_backoff_first_s=0.1,
                        auth_jwt_secret=SecretStr(secret))  # fmt: skip
    services: list[Service] = [
        RenamedAccount(PARTICIPANTS.account), _Risk(), _Trade(command_name=PARTICIPANTS.trade),
        SagaService(PARTICIPANTS, starting_subject=f"ledger.{TRADE_SERVICE}.>"),
    ]  # fmt: skip
    async with running(ServiceHost(settings, services)) as host:
        # Where the trade and risk routes look for their runtimes.
        host.runtimes["trade"] = host.runtimes[TRADE_SERVICE]
        host.runtimes["risk"] = host.runtimes[RISK_SERVICE]
        signer = TokenSigner.from_settings(settings)
        async with _serving(create_app(host, manage_host=False), signer, secret) as served:
            yield served
    await _drop(settings, pool)


@contextlib.asynccontextmanager
async def _serving(asgi: FastAPI, signer: TokenSigner, secret: str) -> AsyncIterator[Served]:
    port = free_port()
    served = Served(f"http://127.0.0.1:{port}", signer, secret)

    @asgi.middleware("http")
    async def note_authorization(request: Request, call_next: RequestResponseEndpoint
                                 ) -> Response:  # fmt: skip
        served.authorizations.append(request.headers.get("authorization"))
        return await call_next(request)

    server = uvicorn.Server(uvicorn.Config(asgi, host="127.0.0.1", port=port, lifespan="off",
                                           log_level="warning", access_log=False, ws="none"))
    serving = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(30):
            while not server.started:  # uvicorn offers no event to wait on
                assert not serving.done(), "uvicorn stopped before it started"
                await asyncio.sleep(0.01)
        yield served
    finally:
        server.should_exit = True
        await serving


async def _drop(settings: Settings, pool: asyncpg.Pool) -> None:
    for name in ("account", RISK_SERVICE, TRADE_SERVICE, "saga"):
        await pool.execute(f"drop schema if exists {settings.schema_for(name)} cascade")
    connection = await nats.connect(settings.nats_servers)
    try:
        js = connection.jetstream()
        for info in await js.consumers_info(settings.events_stream):
            if info.name and info.name.startswith(settings.schema_prefix):
                await js.delete_consumer(settings.events_stream, info.name)
    finally:
        await connection.close()


async def ledger_demo(*args: str, env: dict[str, str | None] | None = None) -> Result:
    return await asyncio.to_thread(
        lambda: RUNNER.invoke(app, ["demo", *args], env={"COLUMNS": "200", **(env or {})})
    )


def balances(accounts: list[dict[str, Any]], currency: str) -> Decimal:
    return sum((Decimal(a["balance"]) for a in accounts if a["currency"] == currency),
               Decimal(0))  # fmt: skip


async def test_the_demo_moves_money_refuses_one_transfer_and_the_balances_add_up(
    served: Served,
) -> None:
    result = await ledger_demo("--url", served.url, "--json", "--token", served.token())

    assert result.exit_code == 0, result.output
    report = orjson.loads(result.stdout)
    accounts = report["accounts"]
    assert balances(accounts, "USD") == Decimal("1250.00")
    assert balances(accounts, "BTC") == Decimal("0.5")
    assert all(Decimal(a["pending_debits"]) == 0 for a in accounts)
    by_owner = {(a["owner"].split("-")[0], a["currency"]): a["balance"] for a in accounts}
    assert by_owner == {("ada", "USD"): "550.00", ("bob", "USD"): "594.50",
                        ("cy", "USD"): "105.50", ("ada", "BTC"): "0.10000000",
                        ("bob", "BTC"): "0.40000000"}  # fmt: skip
    outcomes = [(s["kind"], s["settlement"]["status"], s["saga"]["status"])
                for s in report["settlements"]]  # fmt: skip
    assert outcomes == [("transfer", "completed", "completed")] * 3 + [
        ("trade", "completed", "completed"), ("transfer", "rejected", "rejected")]
    assert report["settlements"][-1]["settlement"]["reason"] == "insufficient_funds"
    assert report["surprises"] == []
    assert report["totals"] == {"USD": {"deposited": "1250.00", "held": "1250.00"},
                                "BTC": {"deposited": "0.50000000", "held": "0.50000000"}}


async def test_the_demo_prints_balances_and_sagas_as_tables_with_the_token_from_env(
    served: Served,
) -> None:
    served.authorizations.clear()
    token = served.token()

    result = await ledger_demo("--url", served.url, env={"LEDGER_TOKEN": token})

    assert result.exit_code == 0, result.output
    assert "balances" in result.stdout
    assert "USD: deposited 1250.00, held 1250.00 ✓" in result.stdout
    assert "BTC: deposited 0.50000000, held 0.50000000 ✓" in result.stdout
    assert "insufficient_funds" in result.stdout
    assert "↩release✓" in result.stdout
    assert "opening 5 accounts" in result.stderr
    assert set(served.authorizations) == {f"Bearer {token}"}


async def test_a_token_that_may_not_read_sagas_still_runs_the_demo(served: Served) -> None:
    token = served.token(Scope.ACCOUNTS_READ, Scope.ACCOUNTS_WRITE, Scope.ACCOUNTS_ADMIN,
                         Scope.TRANSFERS_WRITE)

    result = await ledger_demo("--url", served.url, "--json", "--token", token)

    assert result.exit_code == 0, result.output
    report = orjson.loads(result.stdout)
    assert [s["saga"] for s in report["settlements"]] == [None] * 5
    assert report["surprises"] == []


async def test_without_a_token_the_demo_signs_one_with_the_data_directory_secret(
    served: Served, tmp_path: Path
) -> None:
    secret_file = tmp_path / "auth-secret"
    secret_file.write_text(served.secret)
    secret_file.chmod(0o600)
    served.authorizations.clear()

    result = await ledger_demo("--url", served.url, "--json", "--data-dir", str(tmp_path),
                               env={"LEDGER_AUTH_JWT_SECRET": None})  # fmt: skip

    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout)["surprises"] == []
    subjects = {served.signer_subject(header) for header in served.authorizations}
    assert subjects == {"demo"}


async def test_without_a_token_a_ledger_that_asks_for_one_is_one_line_and_exit_1(
    served: Served, tmp_path: Path
) -> None:
    result = await ledger_demo("--url", served.url, "--data-dir", str(tmp_path),
                               env={"LEDGER_AUTH_JWT_SECRET": None})  # fmt: skip

    assert result.exit_code == 1
    assert result.stdout == ""
    line = error_line(result)
    assert "answered 401" in line
    assert "pass a token with --token or LEDGER_TOKEN" in line


async def test_an_unreachable_ledger_is_one_line_and_exit_1() -> None:
    result = await ledger_demo("--url", f"http://127.0.0.1:{free_port()}")

    assert result.exit_code == 1
    assert result.stdout == ""
    assert error_line(result).startswith("error: no ledger answers at http://127.0.0.1:")


@pytest.mark.parametrize("url", ["localhost:8000", "ftp://x", "http://"])
async def test_a_malformed_url_is_exit_2(url: str) -> None:
    result = await ledger_demo("--url", url)

    assert result.exit_code == 2
    assert "is not an http:// or https:// URL" in result.stderr


def error_line(result: Result) -> str:
    """The one line a failed command printed on stderr, besides what it narrated."""
    lines = [line for line in result.stderr.splitlines() if line.strip() and
             not line.startswith("→")]  # fmt: skip
    assert len(lines) == 1, result.stderr
    return lines[0]
