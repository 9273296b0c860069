"""`ledger prune` against real PostgreSQL: each tracking table loses the rows nothing can ask
for again, and keeps the others."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import nats
import pytest
from nats.js.api import StreamConfig

from eventstore import NO_STREAM, EventStore
from eventstore.retention import TrackingTable
from eventstore.retention import prune as prune_rows
from ledger.bus import ensure_streams
from ledger.settings import SERVICES
from saga import log
from saga.contracts import (
    SagaCompensating,
    SagaEvent,
    SagaParked,
    SagaRejected,
    SagaStarted,
    StepRefused,
    StepStarted,
    StepSucceeded,
    stream_of,
)
from saga.definition import command_id
from saga.runs import SagaRunsProjection
from tests.integration.cli_support import Cli, cli_for
from trade_service.contracts import SettlementLeg


@pytest.fixture
async def cli(
    database_url: str, nats_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> AsyncIterator[Cli]:
    async with cli_for(database_url, nats_url, pool, tmp_path / "data") as made:
        assert (await made.run("migrate")).exit_code == 0
        nc = await nats.connect(nats_url)
        try:
            await ensure_streams(nc.jetstream(), made.settings)  # it keeps messages 30 days
        finally:
            await nc.close()
        yield made


async def add_rows(pool: asyncpg.Pool, schema: str, days_old: list[float]) -> None:
    """One row in each tracking table per age given (in days before now)."""
    for age in days_old:
        at = f"now() - interval '{age} days'"
        await pool.execute(
            f"insert into {schema}.inbox (consumer, message_id, handled_at)"
            f" values ('c', $1, {at})", f"{age}",
        )  # fmt: skip
        await pool.execute(
            f"insert into {schema}.command_replies (command_id, endpoint, reply, recorded_at)"
            f" values ($1, 'e', '{{}}', {at})", uuid.uuid4(),
        )  # fmt: skip
        await pool.execute(
            f"insert into {schema}.idempotency_keys"
            " (scope, key, fingerprint, status_code, response, recorded_at)"
            f" values ('s', $1, 'f', 200, '{{}}', {at})", f"{age}",
        )  # fmt: skip


async def ages(pool: asyncpg.Pool, schema: str) -> dict[str, list[int]]:
    """The rows left in each tracking table, by age in whole days."""
    found = {}
    for table, column in (("inbox", "handled_at"), ("command_replies", "recorded_at"),
                          ("idempotency_keys", "recorded_at")):  # fmt: skip
        rows = await pool.fetch(
            f"select extract(day from now() - {column})::int as age from {schema}.{table}"
            " order by 1"
        )
        found[table] = [row["age"] for row in rows]
    return found


async def start_saga(pool: asyncpg.Pool, schema: str, status: str, days_old: float) -> None:
    await pool.execute(
        f"insert into {schema}.saga_runs (saga_id, kind, status, version, started_at,"
        f" updated_at) values ($1, 'transfer', $2, 1, now() - interval '{days_old} days',"
        " now())", str(uuid.uuid4()), status,
    )  # fmt: skip


async def test_prune_keeps_what_can_still_be_asked_for_in_every_service(
    cli: Cli, pool: asyncpg.Pool
) -> None:
    for service in SERVICES:
        await add_rows(pool, cli.settings.schema_for(service), [5, 20, 29.5, 32, 45])
    await start_saga(pool, cli.settings.schema_for("saga"), "completed", 400)

    result = await cli.run("prune", "--idempotency-keys-days", "10")

    assert result.exit_code == 0, result.output
    for service in SERVICES:
        # inbox: the stream keeps a message 30 days, plus a day's margin
        # command replies: 30 days (no saga is unfinished); idempotency keys: 10 days
        assert await ages(pool, cli.settings.schema_for(service)) == {
            "inbox": [5, 20, 29], "command_replies": [5, 20, 29], "idempotency_keys": [5],
        }


async def record_saga(
    pool: asyncpg.Pool, schema: str, saga_id: str, events: list[SagaEvent], days_old: float
) -> None:
    """Append a saga's log (the runs table follows), as if it had started `days_old` ago."""
    store = EventStore(pool, schema, inline_projections=(SagaRunsProjection(),))
    leg = SettlementLeg(leg_id="leg-1", from_account="a", to_account="b", amount_minor=1,
                        currency="USD")  # fmt: skip
    start = SagaStarted(saga_id=saga_id, kind="transfer", legs=(leg,),
                        deadline_at=datetime.now(UTC))  # fmt: skip
    await store.append(stream_of(saga_id), log.new_events([start, *events], {}), NO_STREAM)
    await pool.execute(
        f"update {schema}.saga_runs set started_at = now() - interval '{days_old} days'"
        " where saga_id = $1", saga_id,
    )  # fmt: skip


def sent(saga_id: str, step: str, *, undo: bool = False) -> StepStarted:
    return StepStarted(step=step, command_id=command_id(saga_id, step, 0), attempt=1,
                       is_compensation=undo)  # fmt: skip


async def add_replies(pool: asyncpg.Pool, schema: str, command_ids: list[uuid.UUID],
                      days_old: float) -> None:  # fmt: skip
    for cid in command_ids:
        await pool.execute(
            f"insert into {schema}.command_replies (command_id, endpoint, reply, recorded_at)"
            f" values ($1, 'e', '{{}}', now() - interval '{days_old} days')", cid,
        )  # fmt: skip


async def test_only_the_replies_of_sagas_not_yet_final_outlive_the_replies_days(
    cli: Cli, pool: asyncpg.Pool
) -> None:
    saga, account = cli.settings.schema_for("saga"), cli.settings.schema_for("account")
    parked, rejected = "tr-parked", "tr-rejected"
    await record_saga(pool, saga, parked, [  # parked for months: an operator may retry it
        sent(parked, "assess"), StepSucceeded(step="assess", reply={}),
        sent(parked, "reserve"), StepRefused(step="reserve", code="frozen"),
        SagaCompensating(reason="frozen", outcome="rejected", steps=("reject",)),
        sent(parked, "reject", undo=True), StepRefused(step="reject", code="not_now"),
        SagaParked(step="reject", error="reject refused (not_now)"),
    ], days_old=200)  # fmt: skip
    await record_saga(pool, saga, rejected, [  # final since long ago, started after it
        sent(rejected, "assess"), StepRefused(step="assess", code="limit"),
        SagaCompensating(reason="limit", outcome="rejected", steps=("reject",)),
        sent(rejected, "reject", undo=True), StepSucceeded(step="reject", reply={}),
        SagaRejected(reason="limit"),
    ], days_old=100)  # fmt: skip
    parked_ids = [command_id(parked, step, 0) for step in ("assess", "reserve", "reject")]
    rejected_ids = [command_id(rejected, step, 0) for step in ("assess", "reject")]
    await add_replies(pool, account, [*parked_ids, *rejected_ids, uuid.uuid4()], days_old=90)
    recent = uuid.uuid4()
    await add_replies(pool, account, [recent], days_old=5)

    result = await cli.run("prune")

    assert result.exit_code == 0, result.output
    left = await pool.fetch(f"select command_id from {account}.command_replies")
    assert {row["command_id"] for row in left} == {*parked_ids, recent}


async def test_a_dry_run_counts_and_deletes_nothing(cli: Cli, pool: asyncpg.Pool) -> None:
    account = cli.settings.schema_for("account")
    await add_rows(pool, account, [5, 45, 50])
    before = await ages(pool, account)

    counted = await cli.json("prune", "--dry-run")

    assert await ages(pool, account) == before
    assert {row["table"]: row["rows"] for row in counted if row["service"] == "account"} == {
        "inbox": 2, "command_replies": 2, "idempotency_keys": 2,
    }
    assert all(row["dry_run"] for row in counted)


async def test_the_inbox_is_kept_whole_when_the_stream_keeps_messages_for_ever(
    cli: Cli, pool: asyncpg.Pool, nats_url: str
) -> None:
    account = cli.settings.schema_for("account")
    await add_rows(pool, account, [5, 400])
    name = f"PRUNE_{uuid.uuid4().hex[:8].upper()}"
    nc = await nats.connect(nats_url)
    try:
        await nc.jetstream().add_stream(StreamConfig(name=name, subjects=[f"{name}.>"]))
        for_ever = await cli.run("prune", LEDGER_EVENTS_STREAM=name)
        no_stream = await cli.run("prune", LEDGER_EVENTS_STREAM=f"{name}_NONE")
    finally:
        await nc.jetstream().delete_stream(name)
        await nc.close()

    assert for_ever.exit_code == 0, for_ever.output
    assert no_stream.exit_code == 0, no_stream.output
    left = await ages(pool, account)
    assert left["inbox"] == [5, 400]
    assert left["command_replies"] == [5]  # the other tables follow their own rules


async def test_a_keys_age_below_a_day_is_refused_with_exit_2(cli: Cli) -> None:
    result = await cli.run("prune", "--idempotency-keys-days", "0.5")

    assert result.exit_code == 2


async def test_hundreds_of_thousands_of_kept_replies_are_kept_and_the_rest_pruned(
    store: EventStore,
) -> None:
    # 300,000 kept ids hash past the default work_mem: as an array in the statement they
    # were compared with each row one by one, and this ran for minutes (docs/retention.md).
    schema, kept = store.schema, [uuid.uuid4() for _ in range(300_000)]
    await store.pool.execute(
        f"insert into {schema}.command_replies (command_id, endpoint, reply, recorded_at)"
        " select id, 'e', '{}', now() - interval '30 days'"
        " from unnest($1::uuid[] || $2::uuid[]) as id",
        kept, [uuid.uuid4() for _ in range(10_000)],
    )  # fmt: skip
    before = datetime.now(UTC)

    for dry_run in (True, False):
        counted = await prune_rows(store.pool, schema, TrackingTable.COMMAND_REPLIES, before,
                                   keep=set(kept), dry_run=dry_run)  # fmt: skip
        assert counted == 10_000
    left = await store.pool.fetchval(f"select count(*) from {schema}.command_replies")
    assert left == 300_000
