"""Properties of the trade service's batches: outcome commands decided in batches answer and
end the settlements exactly as each command alone, in order; and the settlements read model
folded a page at a time equals applying each event alone."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventstore import NO_STREAM, EventStore, RecordedEvent, UnitOfWork
from ledger.commands import CommandRefused, Incoming, one_at_a_time
from ledger.context import new_context
from trade_service import domain
from trade_service.commands import decide_batch
from trade_service.contracts import (
    CompleteSettlement,
    FailSettlement,
    RejectSettlement,
    SettlementOutcome,
    TradeEvent,
)
from trade_service.domain import Settlement, SettlementKind
from trade_service.events import stream_of, to_new_event
from trade_service.projections import SettlementsProjection

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
SETTLEMENTS = 3
UNKNOWN = 7
"""A settlement index that is never requested."""
PROJECTION = SettlementsProjection()
COMMANDS: dict[str, Any] = {
    "complete": CompleteSettlement, "reject": RejectSettlement, "fail": FailSettlement,
}  # fmt: skip


def decision(kind: str) -> Any:
    """The decision of an outcome command, at a fixed time (both stores decide alike)."""

    def decide(command: Any, state: Settlement) -> list[TradeEvent]:
        match kind:
            case "complete":
                return domain.complete(state, NOW)
            case "reject":
                return domain.reject(state, command.reason, command.detail, NOW)
        return domain.fail(state, command.reason, command.detail, NOW)

    return decide


def command_of(kind: str, transfer_id: str) -> Any:
    if kind == "complete":
        return CompleteSettlement(command_id=uuid.uuid4(), transfer_id=transfer_id)
    return COMMANDS[kind](command_id=uuid.uuid4(), transfer_id=transfer_id,
                          reason=f"{kind}ed", detail="why")  # fmt: skip


@pytest.fixture(scope="module")
async def stores(pool: asyncpg.Pool) -> AsyncIterator[tuple[EventStore, EventStore]]:
    """Two trade stores: one for commands alone, one for batches."""
    made = []
    for _ in range(2):
        store = EventStore(pool, f"test_{uuid.uuid4().hex[:12]}",
                           inline_projections=[SettlementsProjection()])  # fmt: skip
        await store.migrate()
        await PROJECTION.ensure_table(store)
        made.append(store)
    yield made[0], made[1]
    for store in made:
        await pool.execute(f"drop schema {store.schema} cascade")


async def requested(store: EventStore, transfer_ids: Sequence[str]) -> None:
    async with store.unit_of_work() as unit:
        for n, transfer_id in enumerate(transfer_ids):
            events = domain.request_transfer(transfer_id, f"a{n}", f"b{n}", 100 + n, "USD",
                                             None, NOW)  # fmt: skip
            await unit.append(stream_of(SettlementKind.TRANSFER, transfer_id),
                              [to_new_event(e) for e in events], NO_STREAM)  # fmt: skip


def outcome(result: SettlementOutcome | CommandRefused) -> Any:
    if isinstance(result, CommandRefused):
        return result.code, result.details
    return result


def handler(kind: str) -> Any:
    async def handle(batch: Sequence[Incoming[Any]], unit: UnitOfWork) -> Any:
        return await decide_batch(unit, batch, decision(kind))

    return handle


async def alone(store: EventStore, kind: str, command: Any) -> Any:
    try:
        async with store.unit_of_work() as unit:
            return outcome(await one_at_a_time(handler(kind))(command, unit))
    except CommandRefused as refusal:
        return outcome(refusal)


async def batched(store: EventStore, kind: str, commands: Sequence[Any]) -> list[Any]:
    async with store.unit_of_work() as unit:
        results = await handler(kind)([Incoming(c, new_context()) for c in commands], unit)
    return [outcome(result) for result in results]


async def footprint(store: EventStore, transfer_ids: Sequence[str]) -> Any:
    rows = await store.pool.fetch(
        f"select transfer_id, status, reason, detail, version from {store.schema}.settlements"
        " where transfer_id = any($1::text[]) order by transfer_id", list(transfer_ids),
    )  # fmt: skip
    return [dict(row) for row in rows]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(
    st.tuples(st.sampled_from(sorted(COMMANDS)), st.sampled_from([0, 1, 2, UNKNOWN]),
              st.sampled_from([False, False, True])),
    min_size=1, max_size=12,
))  # fmt: skip
async def test_batches_decide_as_each_command_alone_in_order(
    stores: tuple[EventStore, EventStore], steps: list[tuple[str, int, bool]]
) -> None:
    one, batches = stores
    prefix = secrets.token_hex(4)
    ids = [f"{prefix}-t{n}" for n in range(SETTLEMENTS)]
    for store in stores:
        await requested(store, ids)
    commands = [(kind, command_of(kind, f"{prefix}-t{t}"), ends) for kind, t, ends in steps]

    expected = [await alone(one, kind, command) for kind, command, _ in commands]
    got: list[Any] = []
    batch: list[Any] = []
    for index, (kind, command, ends) in enumerate(commands):
        batch.append(command)
        if ends or index + 1 == len(commands) or commands[index + 1][0] != kind:
            got.extend(await batched(batches, kind, batch))
            batch = []

    assert got == expected
    assert await footprint(batches, ids) == await footprint(one, ids)


@st.composite
def pages_of_events(draw: st.DrawFn) -> tuple[list[RecordedEvent], list[int]]:
    """Settlements requested and maybe ended, interleaved in commit order; page sizes."""
    histories = draw(st.lists(st.sampled_from([None, *sorted(COMMANDS)]), min_size=1,
                              max_size=6))  # fmt: skip
    queues: list[list[TradeEvent]] = []
    for n, kind in enumerate(histories):
        transfer_id = f"t{n}"
        events = domain.request_transfer(transfer_id, "a", "b", 5 + n, "USD", None, NOW)
        if kind is not None:
            state = domain.fold(events)
            assert state is not None
            events += decision(kind)(command_of(kind, transfer_id), state)
        queues.append(events)
    order = draw(st.permutations([i for i, q in enumerate(queues) for _ in q]))
    taken = [0] * len(queues)
    recorded = []
    for position, n in enumerate(order, start=1):
        event = to_new_event(queues[n][taken[n]])
        taken[n] += 1
        recorded.append(RecordedEvent(
            position, stream_of(SettlementKind.TRANSFER, f"t{n}"), taken[n], uuid.uuid4(),
            event.event_type, dict(event.data), {}, NOW + timedelta(milliseconds=position), 1,
            b"", b"",
        ))  # fmt: skip
    pages = draw(st.lists(st.integers(1, 5), min_size=1, max_size=len(recorded)))
    return recorded, pages


@pytest.fixture(scope="module")
async def tables(pool: asyncpg.Pool) -> AsyncIterator[tuple[str, str]]:
    schema = f"test_{uuid.uuid4().hex[:12]}"
    await pool.execute(f"create schema {schema}")
    one, folded = f"{schema}.one_by_one", f"{schema}.folded"
    for table in (one, folded):
        await pool.execute(PROJECTION.create_sql(table))
    yield one, folded
    await pool.execute(f"drop schema {schema} cascade")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=pages_of_events())
async def test_settlements_folded_a_page_at_a_time_equal_one_event_at_a_time(
    pool: asyncpg.Pool, tables: tuple[str, str],
    program: tuple[list[RecordedEvent], list[int]],
) -> None:
    events, pages = program
    one, folded = tables
    async with pool.acquire() as connection:
        await connection.execute(f"truncate {one}, {folded}")
        start = 0
        for size in [*pages, len(events)]:
            chunk = events[start : start + size]
            start += size
            for event in chunk:
                await PROJECTION.apply(connection, one, event)
            await PROJECTION.apply_batch(connection, folded, chunk)
        differing = await connection.fetch(
            f"select to_jsonb(a) as one, to_jsonb(b) as folded from {one} a"
            f" full join {folded} b using (transfer_id)"
            " where to_jsonb(a) is distinct from to_jsonb(b)"
        )
    assert [dict(row) for row in differing] == []
