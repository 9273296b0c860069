"""Append-only is enforced by the database; a change made behind its back is found by verify."""

from __future__ import annotations

import asyncpg
import pytest

from eventstore import NO_STREAM, EventStore, NewEvent, verify_chains
from tests.integration.settling import wait_settled


async def given_three_streams(store: EventStore) -> None:
    for number in range(1, 4):
        events = [NewEvent("Deposited", {"amount_minor": n * 100}) for n in range(1, 6)]
        result = await store.append(f"account-{number}", events, NO_STREAM)
    await wait_settled(store, result.position)


@pytest.mark.parametrize(
    "statement",
    [
        "update {schema}.events set data = '{{}}'",
        "delete from {schema}.events where stream_version = 2",
        "truncate {schema}.events",
    ],
)
async def test_changing_stored_events_is_refused(
    store: EventStore, pool: asyncpg.Pool, statement: str
) -> None:
    await given_three_streams(store)

    with pytest.raises(asyncpg.PostgresError, match="append-only"):
        await pool.execute(statement.format(schema=store.schema))

    assert len(await store.read_all()) == 15


async def test_verify_passes_on_an_untouched_store(store: EventStore) -> None:
    await given_three_streams(store)

    report = await verify_chains(store)

    assert report.is_intact
    assert (report.streams, report.events) == (3, 15)


async def behind_the_triggers_back(pool: asyncpg.Pool, statement: str) -> None:
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute("set local session_replication_role = replica")
        await connection.execute(statement)


async def test_verify_finds_a_changed_amount(store: EventStore, pool: asyncpg.Pool) -> None:
    await given_three_streams(store)
    await behind_the_triggers_back(
        pool,
        f"update {store.schema}.events set data = '{{\"amount_minor\": 1}}'"
        " where stream_id = 'account-2' and stream_version = 3",
    )

    report = await verify_chains(store)

    assert not report.is_intact
    assert report.first_break is not None
    assert (report.first_break.stream_id, report.first_break.stream_version) == ("account-2", 3)
    assert len(report.breaks) == 1


async def test_verify_finds_a_deleted_event(store: EventStore, pool: asyncpg.Pool) -> None:
    await given_three_streams(store)
    await behind_the_triggers_back(
        pool,
        f"delete from {store.schema}.events where stream_id = 'account-3' and stream_version = 2",
    )

    report = await verify_chains(store)

    assert report.first_break is not None
    assert (report.first_break.stream_id, report.first_break.stream_version) == ("account-3", 2)
    assert "missing" in report.first_break.reason


async def test_verify_finds_a_deleted_last_event(store: EventStore, pool: asyncpg.Pool) -> None:
    await given_three_streams(store)
    await behind_the_triggers_back(
        pool,
        f"delete from {store.schema}.events where stream_id = 'account-1' and stream_version = 5",
    )

    report = await verify_chains(store)

    assert report.first_break is not None
    assert (report.first_break.stream_id, report.first_break.stream_version) == ("account-1", 5)


async def test_verify_finds_a_recomputed_but_unlinked_hash(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    await given_three_streams(store)
    await behind_the_triggers_back(
        pool,
        f"update {store.schema}.events set prev_hash = sha256('forged')"
        " where stream_id = 'account-1' and stream_version = 4",
    )

    report = await verify_chains(store, "account-1")

    assert report.first_break is not None
    assert report.first_break.stream_version == 4
    assert report.streams == 1


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("5000.0", "hash cannot be recomputed"),  # a float: no append stores one
        ("18446744073709551616", "hash cannot be recomputed"),  # read back as a float
        ("1" + "0" * 400, "does not decode"),  # no JSON reader here takes it
    ],
)
async def test_verify_names_a_number_no_append_stores_and_checks_the_other_streams(
    store: EventStore, pool: asyncpg.Pool, value: str, reason: str
) -> None:
    await given_three_streams(store)
    await behind_the_triggers_back(
        pool,
        f"update {store.schema}.events set data = '{{\"amount_minor\": {value}}}'"
        " where stream_id = 'account-2' and stream_version = 3",
    )
    await behind_the_triggers_back(
        pool,
        f"delete from {store.schema}.events where stream_id = 'account-3' and stream_version = 5",
    )

    report = await verify_chains(store)

    assert [(b.stream_id, b.stream_version) for b in report.breaks] == [
        ("account-2", 3), ("account-3", 5),
    ]  # fmt: skip
    assert reason in report.breaks[0].reason
    assert (report.streams, report.events) == (3, 14)
