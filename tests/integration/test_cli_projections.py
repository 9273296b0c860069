"""`ledger projections list|rebuild [--verify]` against real PostgreSQL, on the account
service's read models kept inline by its own projections."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from account_service.app import AccountService
from account_service.contracts import AccountOpened, Deposited, Withdrawn
from account_service.events import stream_of, to_new_event
from eventstore import NO_STREAM, EventStore
from tests.integration.cli_support import Cli, cli_for, one_error_line

ACCOUNTS = 3
EVENTS_PER_ACCOUNT = 4
PROJECTIONS = {"balances", "entries", "holds", "risk_states", "risk_decisions",
               "risk_cancelled_exposures", "settlements", "saga_runs"}  # fmt: skip


@pytest.fixture
async def cli(
    database_url: str, nats_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> AsyncIterator[Cli]:
    async with cli_for(database_url, nats_url, pool, tmp_path / "data") as made:
        yield made


@pytest.fixture
async def accounts(cli: Cli, database_url: str) -> AsyncIterator[EventStore]:
    """The account store, as the service keeps it (projections inline), with a history, in
    a ledger that `ledger migrate` set up."""
    migrated = await cli.run("migrate")
    assert migrated.exit_code == 0, migrated.output
    store = await EventStore.open(
        database_url, cli.settings.schema_for("account"),
        inline_projections=AccountService().inline_projections(),
    )  # fmt: skip
    for number in range(ACCOUNTS):
        await open_and_fund(store, number)
    yield store
    await store.close()


async def open_and_fund(store: EventStore, number: int) -> str:
    account_id = str(uuid.uuid4())
    events = [
        AccountOpened(account_id=account_id, owner=f"owner-{number}", currency="USD",
                      overdraft_limit_minor=0),
        Deposited(entry_id=str(uuid.uuid4()), amount_minor=10_000 * (number + 1)),
        Withdrawn(entry_id=str(uuid.uuid4()), amount_minor=2_500),
        Deposited(entry_id=str(uuid.uuid4()), amount_minor=7, reference="interest"),
    ]  # fmt: skip
    await store.append(stream_of(account_id), [to_new_event(e) for e in events], NO_STREAM)
    return account_id


async def rows(store: EventStore, table: str, key: str) -> list[dict[str, Any]]:
    found = await store.pool.fetch(f"select * from {store.schema}.{table} order by {key}")
    return [dict(row) for row in found]


async def test_list_shows_every_projection_with_its_kind_position_and_rows(
    cli: Cli, accounts: EventStore
) -> None:
    listed = await cli.json("projections", "list")

    by_name = {row["name"]: row for row in listed}
    assert set(by_name) == PROJECTIONS
    assert {row["kind"] for row in listed} == {"inline"}
    balances = by_name["balances"]
    assert balances["service"] == "account"
    assert balances["table"] == f"{accounts.schema}.balances"
    assert balances["rows"] == ACCOUNTS
    assert balances["position"] == ACCOUNTS * EVENTS_PER_ACCOUNT
    assert by_name["entries"]["rows"] == ACCOUNTS * 3
    assert by_name["saga_runs"]["rows"] == 0


async def test_a_rebuild_swaps_in_a_table_equal_to_the_live_one(
    cli: Cli, accounts: EventStore
) -> None:
    before = await rows(accounts, "balances", "account_id")
    entries_before = await rows(accounts, "entries", "global_position")

    reports = await cli.json("projections", "rebuild", "balances")

    assert [report["projection"] for report in reports] == ["balances"]
    assert reports[0]["swapped"] is True
    assert reports[0]["events"] == ACCOUNTS * EVENTS_PER_ACCOUNT
    assert await rows(accounts, "balances", "account_id") == before
    assert await rows(accounts, "entries", "global_position") == entries_before


async def test_a_rebuilt_table_keeps_following_appends(cli: Cli, accounts: EventStore) -> None:
    assert (await cli.run("projections", "rebuild", "--all")).exit_code == 0

    await open_and_fund(accounts, 9)

    assert len(await rows(accounts, "balances", "account_id")) == ACCOUNTS + 1
    verified = await cli.json("projections", "rebuild", "--all", "--verify")
    assert [report["differences"] for report in verified] == [[]] * len(PROJECTIONS)


async def test_verify_passes_on_a_clean_projection_and_swaps_nothing(
    cli: Cli, accounts: EventStore
) -> None:
    result = await cli.run("projections", "rebuild", "balances", "--verify")

    assert result.exit_code == 0, result.output
    assert "none" in result.stdout
    shadow = f"{accounts.schema}.balances__shadow"
    assert await accounts.pool.fetchval("select to_regclass($1)", shadow) is None


async def test_verify_prints_a_row_changed_by_hand_and_exits_1(
    cli: Cli, accounts: EventStore
) -> None:
    # Given a balance changed behind the ledger's back,
    truth = await rows(accounts, "balances", "account_id")
    tampered = truth[1]["account_id"]
    await accounts.pool.execute(
        f"update {accounts.schema}.balances set posted_minor = posted_minor + 1"
        " where account_id = $1", tampered,
    )  # fmt: skip

    # when the projection is verified,
    result = await cli.run("projections", "rebuild", "balances", "--verify", COLUMNS="250")
    as_json = await cli.json("projections", "rebuild", "balances", "--verify", exit_code=1)

    # then the command fails, names the row and the column, and leaves the table as it was.
    assert result.exit_code == 1
    assert "differ from their rebuild: balances (1 row)" in one_error_line(result, stdout=True)
    assert tampered in result.stdout
    assert "posted_minor" in result.stdout
    [difference] = as_json[0]["differences"]
    assert difference["key"] == {"account_id": tampered}
    assert difference["live"]["posted_minor"] == truth[1]["posted_minor"] + 1
    assert difference["rebuilt"]["posted_minor"] == truth[1]["posted_minor"]
    assert as_json[0]["swapped"] is False
    after = await rows(accounts, "balances", "account_id")
    assert after[1]["posted_minor"] == truth[1]["posted_minor"] + 1


async def test_a_rebuild_while_appends_go_on_ends_equal_to_the_events(
    cli: Cli, accounts: EventStore
) -> None:
    # Given writers appending to the account store without pause (the API serving),
    is_done = asyncio.Event()
    appended = 0

    async def write() -> None:
        nonlocal appended
        while not is_done.is_set() or appended < 3:
            await open_and_fund(accounts, 100 + appended)
            appended += 1

    async def rebuild_then_stop() -> Any:
        try:
            return await cli.json("projections", "rebuild", "balances")
        finally:
            is_done.set()

    # when the balances are rebuilt among them,
    async with asyncio.timeout(60), asyncio.TaskGroup() as group:
        group.create_task(write())
        rebuilt = group.create_task(rebuild_then_stop())

    # then the swapped table holds every account, and a verify finds nothing to report.
    assert rebuilt.result()[0]["swapped"] is True
    assert len(await rows(accounts, "balances", "account_id")) == ACCOUNTS + appended
    verified = await cli.json("projections", "rebuild", "balances", "--verify")
    assert verified[0]["differences"] == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("rebuild",), "name one projection or give --all"),
        (("rebuild", "balances", "--all"), "name one projection or give --all"),
        (("rebuild", "balance"), "unknown projection 'balance'"),
        (("rebuild", "nope", "--verify"), "unknown projection 'nope'"),
    ],
)
async def test_bad_arguments_are_one_line_and_exit_2(
    cli: Cli, arguments: tuple[str, ...], message: str
) -> None:
    result = await cli.run("projections", *arguments)

    assert result.exit_code == 2
    assert message in one_error_line(result)


async def test_a_rebuild_of_an_unmigrated_schema_says_to_migrate(cli: Cli) -> None:
    result = await cli.run("projections", "rebuild", "settlements")

    assert result.exit_code == 1
    assert "run: ledger migrate" in one_error_line(result)
