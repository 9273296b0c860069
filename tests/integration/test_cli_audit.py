"""`ledger audit verify|replay|export` through typer's runner, against a ledger whose events
were written by the real account, risk, trade and saga services over real NATS and
PostgreSQL: deposits, then a transfer settled by the orchestrator.

Every participant serves its commands under a name unique to this module. The saga starter
follows a subject nobody publishes on: the module starts each saga itself from its
`TransferRequested`, in that event's context, as the starter does (a starter on the shared
`ledger.trade.>` would also start the sagas of other modules' transfers). The commands read
the schemas straight from PostgreSQL, as an operator's would: the runner gets the servers
and this module's schema prefix in its environment, and runs in a thread because each
command runs its own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import nats
import orjson
import pytest
from typer.testing import CliRunner, Result

from account_service.contracts import EntryKind, HoldPlaced, HoldPosted, HoldSide, HoldVoided
from account_service.events import to_new_event
from ledger import context
from ledger.cli import app
from ledger.host import Service, ServiceHost, running
from ledger.http import create_app
from ledger.settings import Settings
from saga import Orchestrator, Participants, SagaService
from tests.integration.authorized import authorized_client
from tests.integration.renamed_services import RenamedAccount, RenamedRisk
from tests.integration.test_saga import funded_account, known_to_risk
from trade_service.app import TradeService
from trade_service.contracts import TransferRequested

TOKEN = secrets.token_hex(4)
PARTICIPANTS = Participants(account=f"account-u{TOKEN}", risk=f"risk-u{TOKEN}",
                            trade=f"trade-u{TOKEN}")  # fmt: skip
ACTOR = "auditor-test"
RUNNER = CliRunner()


@pytest.fixture(scope="module")
async def settings(database_url: str, nats_url: str) -> Settings:
    return Settings(
        database_url=database_url, nats_url=nats_url, schema_prefix=f"u{TOKEN}_",
        saga_step_timeout_s=1.0, saga_backoff_first_s=0.05, saga_backoff_max_s=0.2,
        saga_lease_s=3.0, saga_poll_interval_s=0.05,
    )  # fmt: skip


@pytest.fixture(scope="module")
async def host(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[ServiceHost]:
    services: list[Service] = [
        RenamedAccount(PARTICIPANTS.account), RenamedRisk(PARTICIPANTS.risk),
        TradeService(command_name=PARTICIPANTS.trade),
        SagaService(PARTICIPANTS, starting_subject=f"ledger.u{TOKEN}none.>"),
    ]  # fmt: skip
    async with running(ServiceHost(settings, services)) as started:
        yield started
    for name in ("account", "risk", "trade", "saga"):
        await pool.execute(f"drop schema if exists {settings.schema_for(name)} cascade")
    connection = await nats.connect(settings.nats_servers)
    try:
        for durable in ("risk-accounts", "trade-steps", "saga-starter"):
            with contextlib.suppress(Exception):
                await connection.jetstream().delete_consumer(
                    settings.events_stream, f"{settings.schema_prefix}{durable}"
                )
    finally:
        await connection.close()


@pytest.fixture(scope="module")
async def client(host: ServiceHost) -> AsyncIterator[httpx.AsyncClient]:
    async with authorized_client(create_app(host, manage_host=False), subject=ACTOR) as created:
        yield created


@dataclass(frozen=True)
class Story:
    """What the module's ledger went through, and instants between the steps."""

    payer: str
    payee: str
    transfer_id: str
    before_all: datetime
    after_deposits: datetime
    after_all: datetime


@pytest.fixture(scope="module")
async def story(host: ServiceHost, client: httpx.AsyncClient, pool: asyncpg.Pool) -> Story:
    """Two funded accounts, then 30.00 moved from one to the other by a settled transfer."""
    before_all = await database_now(pool)
    payer, payee = await funded_account(client, "100.00"), await funded_account(client, "5.00")
    after_deposits = await database_now(pool)
    await known_to_risk(client, payer, payee)
    response = await client.post(
        "/v1/transfers",
        json={"from_account": payer, "to_account": payee, "amount": "30.00", "currency": "USD"},
        headers={"Idempotency-Key": str(uuid.uuid4())},
    )
    assert response.status_code == 202, response.text
    transfer_id: str = response.json()["id"]
    await start_saga(host, transfer_id)
    settled = await client.get(f"/v1/transfers/{transfer_id}", params={"wait": 20})
    assert settled.json()["status"] == "completed", settled.text
    return Story(payer, payee, transfer_id, before_all, after_deposits, await database_now(pool))


async def start_saga(host: ServiceHost, transfer_id: str) -> None:
    """What the saga starter does with a `TransferRequested` from JetStream."""
    [requested] = await host.runtimes["trade"].store.read_stream(f"transfer-{transfer_id}")
    runtime = host.runtimes["saga"]
    orchestrator = Orchestrator(runtime.store, runtime.nc, runtime.settings,
                                participants=PARTICIPANTS)  # fmt: skip
    with context.bound(context.from_metadata(requested.metadata, str(requested.event_id))):
        assert await orchestrator.start(TransferRequested.model_validate(requested.data))


async def database_now(pool: asyncpg.Pool) -> datetime:
    """The database's clock: events are stamped by it."""
    now: datetime = await pool.fetchval("select clock_timestamp()")
    return now


async def ledger(settings: Settings, *args: str) -> Result:
    """`ledger <args>` as an operator of this module's ledger would run it."""
    env = {"LEDGER_DATABASE_URL": settings.database_url, "LEDGER_NATS_URL": settings.nats_url,
           "LEDGER_SCHEMA_PREFIX": settings.schema_prefix, "COLUMNS": "250"}  # fmt: skip
    return await asyncio.to_thread(lambda: RUNNER.invoke(app, list(args), env=env))


def document(result: Result, exit_code: int = 0) -> Any:
    assert result.exit_code == exit_code, result.output
    return orjson.loads(result.stdout)


def error_line(result: Result) -> str:
    """The one line a failed command printed (on stderr), and nothing on stdout."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert result.stdout == "", result.stdout
    return lines[0]


@contextlib.asynccontextmanager
async def tampered(pool: asyncpg.Pool, schema: str, stream_id: str, version: int,
                   data: dict[str, Any]) -> AsyncIterator[None]:  # fmt: skip
    """The event's data changed behind the append-only trigger for the block, then put back."""
    table = f"{schema}.events"
    original = await pool.fetchval(
        f"select data::text from {table} where stream_id = $1 and stream_version = $2",
        stream_id, version,
    )  # fmt: skip
    await behind_the_trigger(pool, table, stream_id, version, orjson.dumps(data).decode())
    try:
        yield
    finally:
        await behind_the_trigger(pool, table, stream_id, version, original)


async def behind_the_trigger(pool: asyncpg.Pool, table: str, stream_id: str, version: int,
                             data: str) -> None:  # fmt: skip
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute(f"alter table {table} disable trigger events_append_only")
        await connection.execute(
            f"update {table} set data = $3::jsonb where stream_id = $1 and stream_version = $2",
            stream_id, version, data,
        )  # fmt: skip
        await connection.execute(f"alter table {table} enable trigger events_append_only")


# --- verify --------------------------------------------------------------------------------


async def test_verify_passes_on_a_clean_store_and_counts_what_it_checked(
    settings: Settings, story: Story
) -> None:
    shown = await ledger(settings, "audit", "verify")
    checked = document(await ledger(settings, "audit", "verify", "--json"))

    assert shown.exit_code == 0, shown.output
    assert "no break" in shown.stdout
    assert checked["clean"] is True
    assert checked["breaks"] == []
    assert [s["service"] for s in checked["services"]] == ["account", "risk", "trade", "saga"]
    assert checked["accounts"] == 2
    by_service = {s["service"]: s for s in checked["services"]}
    assert by_service["account"]["streams"] == 2
    assert by_service["trade"]["events"] == 2  # requested, completed
    assert by_service["saga"]["streams"] == 1
    assert checked["events"] == sum(s["events"] for s in checked["services"])


async def test_verify_names_the_stream_and_version_of_an_event_changed_behind_the_trigger(
    settings: Settings, story: Story, pool: asyncpg.Pool
) -> None:
    deposit = {"entry_id": "forged", "amount_minor": 1_000_000, "reference": None}
    stream_id = f"account-{story.payee}"

    async with tampered(pool, settings.schema_for("account"), stream_id, 2, deposit):
        shown = await ledger(settings, "audit", "verify")
        found = document(await ledger(settings, "audit", "verify", "--json"), exit_code=1)
    after = await ledger(settings, "audit", "verify")

    assert shown.exit_code == 1
    assert f"{stream_id} version 2" in shown.stdout
    assert "hash does not match" in shown.stdout
    first = found["breaks"][0]
    assert (first["stream_id"], first["stream_version"], first["check"]) == (stream_id, 2, "chain")
    checks = {(b["stream_id"], b["check"]) for b in found["breaks"]}
    assert (stream_id, "balances") in checks, "the row no longer equals the fold"
    assert (stream_id, "entries") in checks
    assert after.exit_code == 0, after.output


@pytest.mark.parametrize(
    ("stored", "reason", "replay_exit"),
    [("5000.0", "hash cannot be recomputed", 0),  # the fold takes 5000.0 as 5000
     ("1" + "0" * 400, "does not decode", 1)],  # no JSON reader here takes it
)  # fmt: skip
async def test_verify_names_a_number_no_append_stores_and_replay_says_it_in_one_line(
    settings: Settings, story: Story, pool: asyncpg.Pool, stored: str, reason: str,
    replay_exit: int,
) -> None:
    schema, stream_id = settings.schema_for("account"), f"account-{story.payee}"
    table = f"{schema}.events"
    original = await pool.fetchval(
        f"select data::text from {table} where stream_id = $1 and stream_version = 2", stream_id
    )
    forged = f'{{"entry_id": "forged", "amount_minor": {stored}, "reference": null}}'
    await behind_the_trigger(pool, table, stream_id, 2, forged)
    try:
        found = document(await ledger(settings, "audit", "verify", "--json"), exit_code=1)
        replayed = await ledger(settings, "audit", "replay", "--account", story.payee)
    finally:
        await behind_the_trigger(pool, table, stream_id, 2, original)

    first = found["breaks"][0]
    assert (first["stream_id"], first["stream_version"], first["check"]) == (stream_id, 2, "chain")
    assert reason in first["reason"]
    assert replayed.exit_code == replay_exit, replayed.output
    if replay_exit:
        assert "from version 1 on does not replay" in error_line(replayed)


async def test_verify_finds_a_hold_left_open_after_its_saga_ended(
    settings: Settings, story: Story, host: ServiceHost, client: httpx.AsyncClient
) -> None:
    """A writer's bug, not a tampering: the stray hold is a well-chained event."""
    store = host.runtimes["account"].store
    stream_id = f"account-{await funded_account(client, '5.00')}"  # covers the stray hold
    hold_id = f"{story.transfer_id}:stray:debit"
    placed = HoldPlaced(hold_id=hold_id, side=HoldSide.DEBIT, amount_minor=100,
                        transfer_id=story.transfer_id, kind=EntryKind.TRANSFER)  # fmt: skip
    await store.append(stream_id, [to_new_event(placed)])

    found = document(await ledger(settings, "audit", "verify", "--json",
                                  "--service", "account"), exit_code=1)  # fmt: skip
    voided = HoldVoided(hold_id=hold_id, side=HoldSide.DEBIT, amount_minor=100,
                        transfer_id=story.transfer_id)  # fmt: skip
    await store.append(stream_id, [to_new_event(voided)])
    cleared = await ledger(settings, "audit", "verify", "--service", "account")

    reasons = {(b["stream_id"], b["check"]): b["reason"] for b in found["breaks"]}
    assert "its saga ended (completed)" in reasons[(stream_id, "holds")]
    assert "pending debits" in reasons[(None, "conservation")]
    assert [s["service"] for s in found["services"]] == ["account"]
    assert cleared.exit_code == 0, cleared.output


async def test_verify_finds_money_made_by_a_credit_posted_without_its_debit(
    settings: Settings, story: Story, host: ServiceHost, client: httpx.AsyncClient
) -> None:
    """A writer's bug: every account folds and equals its rows, but the transfers do not
    net to zero; the matching debit, posted afterwards, makes the ledger whole again."""
    store = host.runtimes["account"].store
    transfer_id = f"stray-{secrets.token_hex(4)}"

    async def posted(account_id: str, side: HoldSide) -> None:
        hold_id = f"{transfer_id}:l1:{side.value}"
        await store.append(f"account-{account_id}", [
            to_new_event(HoldPlaced(hold_id=hold_id, side=side, amount_minor=100,
                                    transfer_id=transfer_id, kind=EntryKind.TRANSFER)),
            to_new_event(HoldPosted(hold_id=hold_id, side=side, amount_minor=100,
                                    transfer_id=transfer_id, kind=EntryKind.TRANSFER)),
        ])  # fmt: skip

    payer, payee = await funded_account(client, "5.00"), await funded_account(client, "5.00")
    await posted(payee, HoldSide.CREDIT)
    found = document(await ledger(settings, "audit", "verify", "--json",
                                  "--service", "account"), exit_code=1)  # fmt: skip
    await posted(payer, HoldSide.DEBIT)
    cleared = await ledger(settings, "audit", "verify", "--service", "account")

    assert [(b["stream_id"], b["check"]) for b in found["breaks"]] == [(None, "conservation")]
    assert "USD: posted transfers add up to 100 minor units" in found["breaks"][0]["reason"]
    assert cleared.exit_code == 0, cleared.output


# --- replay --------------------------------------------------------------------------------


async def test_replay_as_of_gives_what_the_balance_endpoint_gives_at_that_instant(
    settings: Settings, story: Story, client: httpx.AsyncClient
) -> None:
    for instant in (story.before_all, story.after_deposits, story.after_all):
        as_of = instant.isoformat()
        replayed = document(await ledger(settings, "audit", "replay", "--account", story.payer,
                                         "--as-of", as_of, "--json"))  # fmt: skip
        endpoint = await client.get(f"/v1/accounts/{story.payer}/balance",
                                    params={"as_of": as_of})  # fmt: skip

        assert endpoint.status_code == 200, endpoint.text
        assert replayed["balance"] == endpoint.json(), as_of
    as_of = story.after_deposits.isoformat()
    at_deposits = document(await ledger(settings, "audit", "replay", "--account", story.payer,
                                        "--as-of", as_of, "--json"))  # fmt: skip
    assert at_deposits["balance"]["balance"] == "100.00"
    assert [e["event_type"] for e in at_deposits["events"]] == ["AccountOpened", "Deposited"]


async def test_replay_shows_each_event_with_its_amount_balance_transfer_and_actor(
    settings: Settings, story: Story
) -> None:
    replayed = document(await ledger(settings, "audit", "replay", "--account", story.payer,
                                     "--json"))  # fmt: skip
    shown = await ledger(settings, "audit", "replay", "--account", story.payer)

    events = replayed["events"]
    assert [e["event_type"] for e in events] == ["AccountOpened", "Deposited", "HoldPlaced",
                                                 "HoldPosted"]  # fmt: skip
    assert [(e["amount"], e["effect"], e["balance_after"]) for e in events[1:]] == [
        ("100.00", "posted", "100.00"), ("-30.00", "held", "100.00"),
        ("-30.00", "posted", "70.00"),
    ]  # fmt: skip
    assert events[2]["available_after"] == "70.00"
    assert {e["transfer_id"] for e in events[2:]} == {story.transfer_id}
    assert events[1]["actor"] == ACTOR, "the token's subject is the actor of a deposit"
    assert all(e["correlation_id"] for e in events)
    assert replayed["balance"]["balance"] == "70.00"
    assert shown.exit_code == 0, shown.output
    for text in ("HoldPosted", "-30.00", "70.00", story.transfer_id, ACTOR, "balance at now"):
        assert text in shown.stdout


async def test_replay_of_a_transfer_tells_its_story_across_every_service(
    settings: Settings, story: Story
) -> None:
    told = document(await ledger(settings, "audit", "replay", "--transfer", story.transfer_id,
                                 "--json"))  # fmt: skip
    shown = await ledger(settings, "audit", "replay", "--transfer", story.transfer_id)

    events = told["events"]
    assert {e["service"] for e in events} == {"trade", "saga", "risk", "account"}
    types = [e["event_type"] for e in events]
    assert types[0] == "TransferRequested"
    assert types[-1] in {"SagaCompleted", "SettlementCompleted"}
    for expected in ("SagaStarted", "StepStarted", "ExposureReserved", "ExposureCommitted",
                     "HoldPlaced", "HoldPosted", "SettlementCompleted"):  # fmt: skip
        assert expected in types
    account_streams = {e["stream_id"] for e in events if e["service"] == "account"}
    assert account_streams == {f"account-{story.payer}", f"account-{story.payee}"}
    times = [e["recorded_at"] for e in events]
    assert times == sorted(times)
    assert {e["correlation_id"] for e in events} == {events[0]["correlation_id"]}, (
        "one transfer, one correlation id, in every service"
    )
    assert shown.exit_code == 0, shown.output
    assert "HoldPosted" in shown.stdout
    assert "SagaCompleted" in shown.stdout


async def test_replay_of_an_unknown_account_or_transfer_is_one_line_and_exit_1(
    settings: Settings, story: Story
) -> None:
    account = await ledger(settings, "audit", "replay", "--account", "no-such-account")
    transfer = await ledger(settings, "audit", "replay", "--transfer", "no-such-transfer")

    assert account.exit_code == 1
    assert "no account no-such-account" in error_line(account)
    assert transfer.exit_code == 1
    assert "no-such-transfer" in error_line(transfer)


# --- export --------------------------------------------------------------------------------


async def test_an_export_verifies_offline_and_a_tampered_line_is_named(
    settings: Settings, story: Story, tmp_path: Path
) -> None:
    out = tmp_path / "period.jsonl"
    exported = await ledger(settings, "audit", "export", "--since", story.before_all.isoformat(),
                            "--until", story.after_all.isoformat(), "--out", str(out))  # fmt: skip
    intact = document(await ledger(settings, "audit", "verify", "--file", str(out), "--json"))
    lines = out.read_bytes().splitlines()
    records = [orjson.loads(line) for line in lines]
    number, deposit = next((n, r) for n, r in enumerate(records, start=1)
                           if r.get("event_type") == "Deposited")  # fmt: skip
    deposit["data"]["amount_minor"] += 1
    forged = tmp_path / "forged.jsonl"
    forged.write_bytes(b"\n".join([*lines[: number - 1], orjson.dumps(deposit),
                                   *lines[number:]]) + b"\n")  # fmt: skip
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(b"\n".join(lines[:-1]) + b"\n")
    leftovers = [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]

    caught = await ledger(settings, "audit", "verify", "--file", str(forged))
    caught_json = document(await ledger(settings, "audit", "verify", "--file", str(forged),
                                        "--json"), exit_code=1)  # fmt: skip
    cut_short = await ledger(settings, "audit", "verify", "--file", str(cut))

    assert exported.exit_code == 0, exported.output
    assert intact["intact"] is True
    assert intact["events"] == len(records) - 2, "all but the header and the end record"
    assert {r["service"] for r in records[1:-1]} == {"account", "risk", "trade", "saga"}
    assert leftovers == [], "no temporary file is left behind"
    assert caught.exit_code == 1
    where = f"line {number} ({deposit['stream_id']} version {deposit['stream_version']})"
    assert where in caught.stdout
    assert caught_json["breaks"][0]["line"] == number
    assert caught_json["breaks"][0]["reason"] == "hash does not match the event"
    assert cut_short.exit_code == 1
    assert "end record" in cut_short.stdout


async def test_an_export_takes_only_the_period_and_only_the_service_asked_for(
    settings: Settings, story: Story, tmp_path: Path
) -> None:
    out = tmp_path / "deposits.jsonl"
    exported = await ledger(settings, "audit", "export", "--since", story.before_all.isoformat(),
                            "--until", story.after_deposits.isoformat(), "--out", str(out),
                            "--service", "account")  # fmt: skip

    records = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert exported.exit_code == 0, exported.output
    events = records[1:-1]
    assert {r["service"] for r in events} == {"account"}
    assert sorted(r["event_type"] for r in events) == ["AccountOpened", "AccountOpened",
                                                       "Deposited", "Deposited"]  # fmt: skip
    assert records[0]["services"] == {"account": settings.schema_for("account")}
    assert records[-1] == {"record": "end", "events": 4, "streams": 2}


@contextlib.asynccontextmanager
async def auditor_role(
    pool: asyncpg.Pool, settings: Settings, *, sees_all_sessions: bool
) -> AsyncIterator[Settings]:
    """Settings that connect as a role of its own that may read the account schema, and
    see when other roles' transactions began only if `sees_all_sessions`."""
    role, schema = f"auditor_{uuid.uuid4().hex[:10]}", settings.schema_for("account")
    await pool.execute(f"create role {role} login")
    try:
        await pool.execute(f"grant usage on schema {schema} to {role}")
        await pool.execute(f"grant select on all tables in schema {schema} to {role}")
        if sees_all_sessions:
            await pool.execute(f"grant pg_read_all_stats to {role}")
        parts = urlsplit(str(settings.database_url))
        as_role = urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))
        yield settings.model_copy(update={"database_url": as_role})
    finally:
        await pool.execute(f"drop owned by {role}")
        await pool.execute(f"drop role {role}")


@pytest.mark.parametrize("sees_all_sessions", [False, True])
async def test_an_export_refuses_when_its_role_cannot_tell_whether_the_period_is_over(
    settings: Settings, story: Story, pool: asyncpg.Pool, tmp_path: Path, sees_all_sessions: bool
) -> None:
    # The services' sessions are there all the time: a role that cannot see when their
    # transactions began cannot tell whether one of the period is still running.
    out = tmp_path / "period.jsonl"
    async with auditor_role(pool, settings, sees_all_sessions=sees_all_sessions) as auditor:
        exported = await ledger(auditor, "audit", "export", "--service", "account",
                                "--since", story.before_all.isoformat(),
                                "--until", story.after_deposits.isoformat(), "--out", str(out))

    if sees_all_sessions:
        assert exported.exit_code == 0, exported.output
        assert out.exists()
    else:
        assert exported.exit_code == 1, exported.output
        assert "pg_read_all_stats" in error_line(exported)
        assert not out.exists()


# --- bad arguments -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["audit", "replay"],
        ["audit", "replay", "--account", "a", "--transfer", "t"],
        ["audit", "replay", "--account", "a", "--as-of", "yesterday"],
        ["audit", "replay", "--account", "a", "--as-of", "0001-01-01T00:00:00+01:00"],
        ["audit", "replay", "--account", "a", "--as-of", "9999-12-31T23:59:59-01:00"],
        ["audit", "replay", "--transfer", "t", "--as-of", "2024-05-01"],
        ["audit", "verify", "--service", "ledger"],
        ["audit", "verify", "--file", "x.jsonl", "--service", "account"],
        ["audit", "export", "--since", "2024-05-01", "--until", "2024-05-02"],
        ["audit", "export", "--since", "2024-05-02", "--until", "2024-05-01", "--out", "x.jsonl"],
        ["audit", "export", "--since", "2024-05-01", "--until", "2999-01-01", "--out", "x.jsonl"],
        ["audit", "export", "--since", "2024-05-01", "--until", "2024-05-02",
         "--out", "/no/such/dir/x.jsonl"],
    ],
)
def test_bad_arguments_are_one_clear_line_and_exit_2(args: list[str]) -> None:
    result = RUNNER.invoke(app, args, env={"COLUMNS": "250"})

    assert result.exit_code == 2, result.output
    assert error_line(result).startswith("error: ")


def test_a_missing_export_file_is_one_line_and_exit_1(tmp_path: Path) -> None:
    result = RUNNER.invoke(app, ["audit", "verify", "--file", str(tmp_path / "none.jsonl")])

    assert result.exit_code == 1
    assert "cannot read" in error_line(result)
