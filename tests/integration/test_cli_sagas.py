"""`ledger sagas list|show|retry` through typer's runner, against sagas settled by the real
account and risk services and the orchestrator over real NATS and PostgreSQL (a stand-in
trade participant can refuse, which parks a saga).

The commands read the saga schema straight from PostgreSQL, as an operator's would: the
runner gets the servers and this module's schema prefix in its environment. It runs in a
thread because each command runs its own event loop (`asyncio.run`).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import nats
import orjson
import pytest
from pydantic import SecretStr
from typer.testing import CliRunner, Result

from eventstore import EventStore
from ledger.auth import Scope, TokenSigner
from ledger.cli import app
from ledger.commands import CommandService
from ledger.embedded import free_port
from ledger.host import Service, ServiceHost, running
from ledger.http import create_app
from ledger.settings import Settings
from risk_service.app import RiskService
from saga import Orchestrator, Participants, SagaService
from tests.integration.renamed_services import RenamedAccount
from tests.integration.test_saga import Trade, funded_account, known_to_risk, transfer, until

TOKEN = secrets.token_hex(4)
RISK_SERVICE = f"c{TOKEN}risk"
"""The risk service's name here: it serves its commands under it."""
PARTICIPANTS = Participants(account=f"account-c{TOKEN}", risk=RISK_SERVICE,
                            trade=f"trade-c{TOKEN}")  # fmt: skip
FINAL = {"completed", "rejected", "failed", "requires_intervention"}
RUNNER = CliRunner()


class _Risk(RiskService):
    """The real risk service under a name of its own: its commands are `<name>.assess`, ..."""

    name = RISK_SERVICE


@pytest.fixture(scope="module")
async def settings(database_url: str, nats_url: str) -> Settings:
    return Settings(
        database_url=database_url, nats_url=nats_url, schema_prefix=f"c{TOKEN}_",
        saga_step_timeout_s=1.0, saga_step_max_attempts=3, saga_backoff_first_s=0.05,
        saga_backoff_max_s=0.2, saga_lease_s=3.0, saga_poll_interval_s=0.05,
        auth_jwt_secret=SecretStr(secrets.token_urlsafe(32)),
    )  # fmt: skip


@pytest.fixture(scope="module")
async def host(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[ServiceHost]:
    """Account, risk and the saga service with its orchestrator; the starter follows a
    subject nobody publishes on (this module starts its sagas itself)."""
    services: list[Service] = [
        RenamedAccount(PARTICIPANTS.account), _Risk(),
        SagaService(PARTICIPANTS, starting_subject=f"ledger.c{TOKEN}none.>"),
    ]  # fmt: skip
    async with running(ServiceHost(settings, services)) as started:
        started.runtimes["risk"] = started.runtimes[RISK_SERVICE]  # where the risk routes look
        yield started
    for name in ("account", RISK_SERVICE, "saga"):
        await pool.execute(f"drop schema if exists {settings.schema_for(name)} cascade")
    connection = await nats.connect(settings.nats_servers)
    try:
        for durable in (f"{settings.schema_for(RISK_SERVICE)}-accounts",
                        f"{settings.schema_for('saga')}-starter"):  # fmt: skip
            with contextlib.suppress(Exception):
                await connection.jetstream().delete_consumer(settings.events_stream, durable)
    finally:
        await connection.close()


@pytest.fixture(scope="module")
async def trade(host: ServiceHost, pool: asyncpg.Pool) -> AsyncIterator[Trade]:
    schema = f"c{TOKEN}_trade_stub"
    store = EventStore(pool, schema)
    await store.migrate()
    stub = Trade()
    assert host.nc is not None
    service = CommandService(host.nc, store, name=PARTICIPANTS.trade, version="0.1.0",
                             stop_grace_s=0.1)  # fmt: skip
    stub.register(service)
    await service.start()
    yield stub
    await service.stop()
    await pool.execute(f"drop schema if exists {schema} cascade")


@pytest.fixture(scope="module")
async def client(host: ServiceHost) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(host, manage_host=False))
    token = TokenSigner.from_settings(host.settings).issue("cli-sagas-test", [Scope.ADMIN],
                                                           ttl_s=3600)  # fmt: skip
    async with httpx.AsyncClient(transport=transport, base_url="http://ledger",
                                 headers={"Authorization": f"Bearer {token}"}) as created:
        yield created


async def ledger(settings: Settings, *args: str, **env_overrides: str) -> Result:
    """`ledger <args>` as an operator on this module's ledger would run it."""
    env = {"LEDGER_DATABASE_URL": settings.database_url, "LEDGER_NATS_URL": settings.nats_url,
           "LEDGER_SCHEMA_PREFIX": settings.schema_prefix, "COLUMNS": "200",
           **env_overrides}  # fmt: skip
    return await asyncio.to_thread(lambda: RUNNER.invoke(app, list(args), env=env))


def document(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return orjson.loads(result.stdout)


def error_line(result: Result) -> str:
    """The one line a failed command printed (on stderr), and nothing on stdout."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert result.stdout == "", result.stdout
    return lines[0]


async def settled_saga(host: ServiceHost, client: httpx.AsyncClient, payer: str, payee: str,
                       amount_minor: int) -> str:  # fmt: skip
    """Start a saga moving `amount_minor` and wait until it is final or parked; its id."""
    request = transfer(payer, payee, amount_minor)
    runtime = host.runtimes["saga"]
    assert await Orchestrator(runtime.store, runtime.nc, runtime.settings).start(request)
    await until(lambda: _is_final(client, request.transfer_id))
    return request.transfer_id


async def _is_final(client: httpx.AsyncClient, saga_id: str) -> bool:
    response = await client.get(f"/v1/sagas/{saga_id}")
    return response.status_code == 200 and response.json()["status"] in FINAL


@pytest.fixture(scope="module")
async def two_sagas(
    host: ServiceHost, client: httpx.AsyncClient, trade: Trade
) -> tuple[str, str]:
    """A completed saga and one rejected for insufficient funds."""
    payer, payee = await funded_account(client, "10.00"), await funded_account(client, None)
    await known_to_risk(client, payer, payee)
    completed = await settled_saga(host, client, payer, payee, 250)
    rejected = await settled_saga(host, client, payer, payee, 5_000)
    return completed, rejected


async def test_list_shows_each_saga_with_its_latest_step_and_the_counts_by_status(
    settings: Settings, two_sagas: tuple[str, str]
) -> None:
    completed, rejected = two_sagas

    listed = document(await ledger(settings, "sagas", "list", "--json"))
    only_rejected = document(await ledger(settings, "sagas", "list", "--status", "rejected",
                                          "--json"))  # fmt: skip
    table = await ledger(settings, "sagas", "list")

    by_id = {item["saga_id"]: item for item in listed["items"]}
    assert (by_id[completed]["status"], by_id[completed]["step"]) == ("completed", "complete")
    assert by_id[completed]["kind"] == "transfer"
    assert by_id[completed]["attempt"] == 1
    assert by_id[rejected]["status"] == "rejected"
    assert by_id[rejected]["is_compensation"], "a rejected saga ends on its last compensation"
    assert listed["counts"]["completed"] >= 1
    assert listed["counts"]["rejected"] >= 1
    assert {item["status"] for item in only_rejected["items"]} == {"rejected"}
    assert rejected in {item["saga_id"] for item in only_rejected["items"]}
    assert table.exit_code == 0, table.output
    assert completed in table.stdout
    assert rejected in table.stdout
    assert "total" in table.stdout


async def test_list_honours_the_limit(settings: Settings, two_sagas: tuple[str, str]) -> None:
    listed = document(await ledger(settings, "sagas", "list", "--limit", "1", "--json"))

    assert len(listed["items"]) == 1
    assert sum(listed["counts"].values()) >= 2


async def test_show_prints_every_step_as_a_timeline_with_its_outcome_and_duration(
    settings: Settings, two_sagas: tuple[str, str]
) -> None:
    completed, rejected = two_sagas

    done = document(await ledger(settings, "sagas", "show", completed, "--json"))
    refused = document(await ledger(settings, "sagas", "show", rejected, "--json"))
    table = await ledger(settings, "sagas", "show", rejected)

    steps = [(e["step"], e["outcome"]) for e in done["timeline"] if e["kind"] == "step"]
    assert steps == [("assess", "replied"), ("reserve", "replied"), ("post", "replied"),
                     ("commit", "replied"), ("complete", "replied")]  # fmt: skip
    assert all(e["duration_s"] >= 0 for e in done["timeline"] if e["kind"] == "step")
    assert done["timeline"][0]["kind"] == "started"
    assert done["timeline"][-1]["kind"] == "completed"
    assert done["legs"][0]["amount"] == "2.50"
    assert (done["status"], done["parked"]) == ("completed", None)
    assert refused["status"] == "rejected"
    assert refused["reason"] == "insufficient_funds"
    reserve = next(e for e in refused["timeline"] if e["step"] == "reserve")
    assert reserve["outcome"] == "refused"
    assert reserve["detail"].startswith("insufficient_funds")
    compensations = [(e["step"], e["outcome"]) for e in refused["timeline"]
                     if e["kind"] == "compensation"]  # fmt: skip
    assert compensations == [("release", "compensated"), ("reject", "compensated")]
    assert table.exit_code == 0, table.output
    assert "timeline" in table.stdout
    assert "↩ release" in table.stdout
    assert "outcome rejected (insufficient_funds" in table.stdout


async def test_a_parked_saga_shows_why_and_an_operator_retry_sends_it_on(
    settings: Settings, host: ServiceHost, client: httpx.AsyncClient, trade: Trade
) -> None:
    payer, payee = await funded_account(client, "5.00"), await funded_account(client, None)
    await known_to_risk(client, payer, payee)
    request = transfer(payer, payee, 100)
    trade.refuse.add(request.transfer_id)  # "complete" refused after the pivot: parked
    runtime = host.runtimes["saga"]
    await Orchestrator(runtime.store, runtime.nc, runtime.settings).start(request)
    saga_id = request.transfer_id
    await until(lambda: _is_final(client, saga_id))

    parked = document(await ledger(settings, "sagas", "show", saga_id, "--json"))
    table = await ledger(settings, "sagas", "show", saga_id)
    listed = document(await ledger(settings, "sagas", "list", "--status",
                                   "requires_intervention", "--json"))  # fmt: skip
    trade.refuse.discard(saga_id)
    retried = await ledger(settings, "sagas", "retry", saga_id, "--by", "ops-test")
    await until(lambda: _is_final(client, saga_id))
    finished = document(await ledger(settings, "sagas", "show", saga_id, "--json"))
    again = await ledger(settings, "sagas", "retry", saga_id)

    assert parked["status"] == "requires_intervention"
    assert parked["parked"]["step"] == "complete"
    assert "not_now" in parked["parked"]["error"]
    assert "parked at step complete" in table.stdout
    assert f"ledger sagas retry {saga_id}" in table.stdout
    assert saga_id in [item["saga_id"] for item in listed["items"]]
    assert retried.exit_code == 0, retried.output
    assert f"saga {saga_id} retried by ops-test" in retried.stdout
    assert finished["status"] == "completed"
    retried_turn = next(e for e in finished["timeline"] if e["kind"] == "retried")
    assert retried_turn["detail"] == "by ops-test"
    assert [e["outcome"] for e in finished["timeline"] if e["step"] == "complete"][-1] == "replied"
    assert again.exit_code == 1
    assert "is completed, not parked" in error_line(again)


@pytest.mark.parametrize("command", ["show", "retry"])
async def test_an_unknown_saga_is_one_line_and_exit_1(
    settings: Settings, host: ServiceHost, command: str
) -> None:
    result = await ledger(settings, "sagas", command, "no-such-saga")

    assert result.exit_code == 1
    assert error_line(result) == "error: no saga no-such-saga"


async def test_a_database_without_sagas_is_one_line_and_exit_1(settings: Settings) -> None:
    result = await ledger(settings, "sagas", "list", LEDGER_SCHEMA_PREFIX="nosuch_")

    assert result.exit_code == 1
    assert error_line(result).startswith("error: no sagas in schema 'nosuch_saga' at ")


async def test_a_database_that_does_not_answer_is_one_line_and_exit_1(
    settings: Settings,
) -> None:
    port = free_port()
    result = await ledger(settings, "sagas", "show", "s-1",
                          LEDGER_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{port}/postgres")

    assert result.exit_code == 1
    assert error_line(result).startswith(f"error: PostgreSQL at 127.0.0.1:{port} does not answer")


@pytest.mark.parametrize(
    "args",
    [["show", "not a saga!"], ["retry", "x" * 101], ["list", "--status", "sleeping"],
     ["list", "--limit", "0"], ["list", "--colour"]],
)  # fmt: skip
async def test_bad_arguments_exit_2(settings: Settings, host: ServiceHost, args: list[str]) -> None:
    result = await ledger(settings, "sagas", *args)

    assert result.exit_code == 2, result.output
    assert result.stdout == ""
