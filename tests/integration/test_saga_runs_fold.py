"""Property: `saga_runs` folded a page at a time (`apply_batch`: the orchestrator's group
commit, a rebuild's pages) is row for row what applying each event alone gives, whatever
the sagas' histories, their interleaving, the page breaks and the leases taken between."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventstore import NO_STREAM, EventStore, RecordedEvent
from eventstore._db import Executor
from saga import log
from saga.contracts import (
    CATEGORY,
    SagaCompensating,
    SagaEvent,
    SagaParked,
    SagaRejected,
    SagaRetried,
    SagaStarted,
    StepFailed,
    StepRefused,
    StepStarted,
    StepSucceeded,
    stream_of,
)
from saga.definition import SETTLE_LEGS, command_id
from saga.runs import SagaRunsProjection
from saga.state import fold
from trade_service.contracts import SettlementLeg

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
STEP_EVENTS = [
    "StepStarted", "StepSucceeded", "StepRefused", "StepFailed", "SagaCompensating",
    "SagaParked", "SagaRetried", "SagaCompleted", "SagaRejected", "SagaFailed",
]  # fmt: skip
PROJECTION = SagaRunsProjection()


def data_of(event_type: str, n: int) -> dict[str, Any]:
    """Event data with what `saga_runs` reads of each type (`n` makes values differ)."""
    match event_type:
        case "SagaStarted":
            return {"kind": "transfer"}
        case "StepRefused":
            return {"code": f"code {n}"}
        case "StepFailed":
            return {"error": f"timeout {n}", "retry_at": (EPOCH + timedelta(seconds=n)).isoformat()}
        case "SagaParked":
            return {"error": f"stuck {n}", "step": "void"}
        case "SagaCompensating":
            return {"reason": f"refused {n}"}
        case "SagaRejected" | "SagaFailed":
            return {"reason": f"reason {n}"}
    return {}


def valid(types: list[str]) -> list[str]:
    """A history `saga_runs` can hold: a retry only of a parked saga."""
    kept, is_parked = [], False
    for event_type in types:
        if event_type == "SagaRetried" and not is_parked:
            continue
        is_parked = event_type == "SagaParked" or (is_parked and event_type != "SagaRetried")
        kept.append(event_type)
    return kept


histories = st.lists(
    st.lists(st.sampled_from(STEP_EVENTS), max_size=8).map(valid), min_size=1, max_size=6
)


@st.composite
def programs(draw: st.DrawFn) -> tuple[list[RecordedEvent], list[int], set[int]]:
    """Every saga's events, interleaved in one commit order; page sizes; where leases are
    taken (after which pages)."""
    sagas = draw(histories)
    queues = [["SagaStarted", *types] for types in sagas]
    order = draw(st.permutations([i for i, q in enumerate(queues) for _ in q]))
    versions = [0] * len(queues)
    ids = [str(uuid.uuid4()) for _ in queues]
    events = []
    for position, saga in enumerate(order, start=1):
        event_type = queues[saga][versions[saga]]
        versions[saga] += 1
        events.append(RecordedEvent(
            position, f"{CATEGORY}-{ids[saga]}", versions[saga], uuid.uuid4(), event_type,
            data_of(event_type, position), {}, EPOCH + timedelta(milliseconds=position), 1,
            b"", b"",
        ))  # fmt: skip
    pages = draw(st.lists(st.integers(1, 8), min_size=1, max_size=len(events)))
    leases = set(draw(st.lists(st.integers(0, len(pages)), max_size=4)))
    return events, pages, leases


@pytest.fixture(scope="module")
async def tables(pool: asyncpg.Pool) -> AsyncIterator[tuple[str, str]]:
    schema = f"test_{uuid.uuid4().hex[:12]}"
    await pool.execute(f"create schema {schema}")
    one, folded = f"{schema}.one_by_one", f"{schema}.folded"
    for table in (one, folded):
        await pool.execute(PROJECTION.create_sql(table))
    yield one, folded
    await pool.execute(f"drop schema {schema} cascade")


async def take_leases(connection: Executor, table: str, page: int) -> None:
    await connection.execute(
        f"update {table} set lease_owner = $1, lease_until = $2", f"worker-{page}", EPOCH
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=programs())
async def test_folded_pages_equal_one_event_at_a_time(
    pool: asyncpg.Pool,
    tables: tuple[str, str],
    program: tuple[list[RecordedEvent], list[int], set[int]],
) -> None:
    events, pages, leases = program
    one, folded = tables
    async with pool.acquire() as connection:
        await connection.execute(f"truncate {one}, {folded}")
        start = 0
        for page, size in enumerate([*pages, len(events)]):
            if page in leases:
                await take_leases(connection, one, page)
                await take_leases(connection, folded, page)
            chunk = events[start : start + size]
            start += size
            for event in chunk:
                await PROJECTION.apply(connection, one, event)
            await PROJECTION.apply_batch(connection, folded, chunk)
        assert start >= len(events)

        differing = await connection.fetch(
            f"select to_jsonb(a) as one, to_jsonb(b) as folded from {one} a"
            f" full join {folded} b using (saga_id)"
            " where to_jsonb(a) is distinct from to_jsonb(b)"
        )
    assert [dict(row) for row in differing] == []


def step(name: str, attempt: int = 1, series: int = 0, *, undo: bool = False) -> StepStarted:
    return StepStarted(step=name, command_id=command_id("tr-1", name, series), attempt=attempt,
                       is_compensation=undo)  # fmt: skip


LEG = SettlementLeg(leg_id="leg-1", from_account="a", to_account="b", amount_minor=1,
                    currency="USD")  # fmt: skip
RECOVERING_SAGA: list[SagaEvent] = [
    SagaStarted(saga_id="tr-1", kind="transfer", legs=(LEG,), deadline_at=EPOCH),
    step("assess"), StepFailed(step="assess", error="timeout", attempt=1, retry_at=EPOCH),
    step("assess", 2), StepSucceeded(step="assess", reply={}),
    step("reserve"), StepRefused(step="reserve", code="insufficient_funds"),
    SagaCompensating(reason="insufficient_funds", outcome="rejected",
                     steps=("release", "reject")),
    step("release", undo=True), StepSucceeded(step="release", reply={}),
    step("reject", undo=True), StepRefused(step="reject", code="not_now"),
    SagaParked(step="reject", error="reject refused (not_now): no detail"),
    SagaRetried(by="operator"), step("reject", series=1, undo=True),
    StepSucceeded(step="reject", reply={}), SagaRejected(reason="insufficient_funds"),
]  # fmt: skip


async def test_the_last_error_of_a_row_is_the_sagas_own_after_every_event(
    pool: asyncpg.Pool, tables: tuple[str, str]
) -> None:
    one, _ = tables
    async with pool.acquire() as connection:
        await connection.execute(f"truncate {one}")
        for version, event in enumerate(RECOVERING_SAGA, start=1):
            recorded = RecordedEvent(
                version, f"{CATEGORY}-tr-1", version, uuid.uuid4(), event.event_type,
                event.model_dump(mode="json"), {}, EPOCH + timedelta(seconds=version), 1,
                b"", b"",
            )  # fmt: skip
            await PROJECTION.apply(connection, one, recorded)
            listed = await connection.fetchval(f"select last_error from {one}")

            expected = fold(SETTLE_LEGS, RECOVERING_SAGA[:version]).last_error
            assert (event.event_type, listed) == (event.event_type, expected)


def started_as(saga_id: str) -> SagaStarted:
    """The recovering saga's SagaStarted, for a saga of another id."""
    first = RECOVERING_SAGA[0]
    assert isinstance(first, SagaStarted)
    return first.model_copy(update={"saga_id": saga_id})


async def migrate_from(saga_store: EventStore, older_last_error: str | None) -> None:
    """Every row's `last_error` as an older projection left it, then migration 0010 again."""
    schema = saga_store.schema
    await saga_store.pool.execute(f"update {schema}.saga_runs set last_error = $1",
                                  older_last_error)  # fmt: skip
    await saga_store.pool.execute(
        f"delete from {schema}.schema_migrations where name = 'saga_runs_last_error'"
    )
    await saga_store.migrate()


async def test_migrating_corrects_the_errors_an_older_projection_kept_from_the_events(
    saga_store: EventStore,
) -> None:
    for saga_id, length in (("tr-recovered", 5), ("tr-failing", 3), ("tr-parked", 13)):
        events = [started_as(saga_id), *RECOVERING_SAGA[1:length]]
        await saga_store.append(stream_of(saga_id), log.new_events(events, {}), NO_STREAM)

    # The rows as the projection left them before it cleared errors: the first one, kept.
    await migrate_from(saga_store, "timeout")

    rows = await saga_store.pool.fetch(
        f"select saga_id, last_error from {saga_store.schema}.saga_runs"
    )
    assert {row["saga_id"]: row["last_error"] for row in rows} == {  # each saga's fold
        "tr-recovered": None, "tr-failing": "timeout",
        "tr-parked": "reject refused (not_now): no detail",
    }  # fmt: skip


async def test_migrating_sets_the_refusal_an_older_projection_never_wrote(
    saga_store: EventStore,
) -> None:
    # A refusal of a step before the pivot compensates: until the next step's outcome the
    # saga's fold shows the refusal, where the older projection, which set no error on a
    # refusal, left the row's empty (it had seen no failure).
    refused = [started_as("tr-refused"), step("assess"), StepSucceeded(step="assess", reply={}),
               *RECOVERING_SAGA[5:8]]  # fmt: skip
    await saga_store.append(stream_of("tr-refused"), log.new_events(refused, {}), NO_STREAM)

    await migrate_from(saga_store, None)

    listed = await saga_store.pool.fetchval(
        f"select last_error from {saga_store.schema}.saga_runs"
    )
    assert listed == fold(SETTLE_LEGS, refused).last_error == "refused: insufficient_funds"
