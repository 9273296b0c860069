"""`ledger migrate` and `ledger status` against real PostgreSQL and NATS."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from account_service.app import AccountService
from eventstore import NO_STREAM, EventStore, NewEvent
from eventstore.migrations import load_migrations
from ledger.embedded import free_port
from ledger.host import ServiceHost, running
from ledger.settings import SERVICES
from risk_service.app import RiskService
from saga.runs import SagaRunsProjection
from tests.integration.cli_support import Cli, cli_for, one_error_line
from trade_service.domain import SettlementKind, request_transfer
from trade_service.events import stream_of, to_new_event
from trade_service.projections import SettlementsProjection

LATEST = len(load_migrations())


@pytest.fixture
async def cli(
    database_url: str, nats_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> AsyncIterator[Cli]:
    async with cli_for(database_url, nats_url, pool, tmp_path / "data") as made:
        yield made


async def applied(pool: asyncpg.Pool, schema: str) -> list[int]:
    rows = await pool.fetch(f"select version from {schema}.schema_migrations order by 1")
    return [row["version"] for row in rows]


async def test_migrate_brings_every_service_schema_up_and_a_second_run_applies_nothing(
    cli: Cli, pool: asyncpg.Pool
) -> None:
    first = await cli.run("migrate")

    assert first.exit_code == 0, first.output
    for service in SERVICES:
        schema = cli.settings.schema_for(service)
        assert schema in first.stdout
        assert await applied(pool, schema) == list(range(1, LATEST + 1))
    # the read-model tables are there too, as a service's start would make them
    balances = f"{cli.settings.schema_for('account')}.balances"
    assert await pool.fetchval("select to_regclass($1)", balances) is not None

    again = await cli.run("migrate")

    assert again.exit_code == 0, again.output
    assert again.stdout.count("none") == len(SERVICES)
    assert await applied(pool, cli.settings.schema_for("saga")) == list(range(1, LATEST + 1))


async def test_migrate_rebuilds_a_read_model_an_older_version_made_and_keeps_its_rows(
    cli: Cli, pool: asyncpg.Pool, database_url: str
) -> None:
    assert (await cli.run("migrate")).exit_code == 0
    schema = cli.settings.schema_for("trade")
    store = await EventStore.open(database_url, schema,
                                  inline_projections=[SettlementsProjection()])  # fmt: skip
    try:
        transfer_id = str(uuid.uuid4())
        [requested] = request_transfer(transfer_id, "payer", "payee", 100, "USD", None,
                                       datetime.now(UTC))  # fmt: skip
        await store.append(stream_of(SettlementKind.TRANSFER, transfer_id),
                           [to_new_event(requested)], NO_STREAM)  # fmt: skip
    finally:
        await store.close()
    # The table as version 1 of the projection left it: no tx_id, no version noted.
    await pool.execute(f"alter table {schema}.settlements drop column tx_id;"
                       f" comment on table {schema}.settlements is null")  # fmt: skip

    result = await cli.run("migrate", "--service", "trade")

    assert result.exit_code == 0, result.output
    rows = await pool.fetch(f"select transfer_id, tx_id from {schema}.settlements")
    assert [row["transfer_id"] for row in rows] == [transfer_id]
    assert rows[0]["tx_id"] is not None


async def test_migrate_one_service_touches_no_other_schema(cli: Cli, pool: asyncpg.Pool) -> None:
    result = await cli.run("migrate", "--service", "risk")

    assert result.exit_code == 0, result.output
    assert await applied(pool, cli.settings.schema_for("risk")) == list(range(1, LATEST + 1))
    for service in ("account", "trade", "saga"):
        schema = cli.settings.schema_for(service)
        assert await pool.fetchval("select to_regnamespace($1)", schema) is None


async def test_migrate_of_an_unknown_service_is_one_line_and_exit_2(cli: Cli) -> None:
    result = await cli.run("migrate", "--service", "ledgerr")

    assert result.exit_code == 2
    assert "unknown service 'ledgerr'" in one_error_line(result)


async def start_sagas(cli: Cli, database_url: str) -> None:
    """Two sagas in the saga log, one of them completed, through the saga runs projection."""
    store = await EventStore.open(database_url, cli.settings.schema_for("saga"),
                                  inline_projections=[SagaRunsProjection()])  # fmt: skip
    try:
        for number in range(2):
            saga_id = str(uuid.uuid4())
            started = {"saga_id": saga_id, "kind": "transfer", "legs": [],
                       "deadline_at": datetime.now(UTC).isoformat()}  # fmt: skip
            events = [NewEvent("SagaStarted", started)]
            if number == 0:
                events.append(NewEvent("SagaCompleted", {}))
            await store.append(f"saga-{saga_id}", events, NO_STREAM)
    finally:
        await store.close()


async def test_status_json_shows_migrations_lag_consumers_sagas_and_instances(
    cli: Cli, database_url: str
) -> None:
    # Given a migrated ledger with two sagas, and the account and risk services running,
    assert (await cli.run("migrate")).exit_code == 0
    await start_sagas(cli, database_url)
    host = ServiceHost(cli.settings, [AccountService(), RiskService()])
    async with running(host):
        # when the status is asked for as JSON,
        status = await cli.json("status")

    # then every service is migrated, the risk service's durable consumer and the running
    # command services are found, and the sagas are counted by status.
    by_service = {row["service"]: row for row in status["services"]}
    assert set(by_service) == set(SERVICES)
    for row in by_service.values():
        assert row["migrations_applied"] == row["migrations_latest"] == LATEST
        assert row["relay_lag_events"] >= 0
    assert by_service["saga"]["relay_lag_events"] == 3  # three saga events, and no saga relay
    consumers = {consumer["name"]: consumer for consumer in status["consumers"]}
    risk_durable = f"{cli.settings.schema_for('risk')}-accounts"
    assert consumers[risk_durable]["service"] == "risk"
    assert consumers[risk_durable]["pending"] >= 0
    assert status["sagas"] == {"completed": 1, "running": 1}
    names = {instance["name"] for instance in status["instances"]}
    assert {"account", "risk"} <= names
    assert all(instance["version"] and instance["id"] for instance in status["instances"])


async def test_status_prints_each_section_for_a_person(cli: Cli) -> None:
    assert (await cli.run("migrate")).exit_code == 0

    result = await cli.run("status", COLUMNS="200")

    assert result.exit_code == 0, result.output
    for heading in ("services", "no saga", "instance"):
        assert heading in result.stdout
    assert cli.settings.schema_for("account") in result.stdout


async def test_status_of_an_unmigrated_ledger_says_so(cli: Cli) -> None:
    status = await cli.json("status")

    assert {row["migrations_applied"] for row in status["services"]} == {0}
    assert {row["relay_lag_events"] for row in status["services"]} == {None}
    assert status["sagas"] is None


async def test_status_with_nats_unreachable_is_one_line_and_exit_1(cli: Cli) -> None:
    nowhere = f"nats://127.0.0.1:{free_port()}"

    result = await cli.run("status", LEDGER_NATS_URL=nowhere)

    assert result.exit_code == 1
    assert "NATS at 127.0.0.1" in one_error_line(result)


async def test_status_with_postgres_unreachable_is_one_line_and_exit_1(cli: Cli) -> None:
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"

    result = await cli.run("status", LEDGER_DATABASE_URL=nowhere)

    assert result.exit_code == 1
    assert "PostgreSQL at 127.0.0.1" in one_error_line(result)


async def test_a_bad_setting_is_one_line_and_exit_2(cli: Cli) -> None:
    result = await cli.run("status", LEDGER_SCHEMA_PREFIX="Not A Prefix")

    assert result.exit_code == 2
    assert "LEDGER_SCHEMA_PREFIX" in one_error_line(result)
