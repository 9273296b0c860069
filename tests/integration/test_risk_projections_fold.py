"""Property: the risk read models (`risk_states`, `risk_decisions`,
`risk_cancelled_exposures`) folded a page at a time (`apply_batch`: an append's unit of
work, a rebuild's pages) are row for row what applying each event alone gives, whatever the
accounts' histories, their interleaving and the page breaks. Histories are decided by the
domain's own rules, so every one is a valid one."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventstore import Projection, RecordedEvent
from eventstore._db import Executor
from risk_service import domain
from risk_service.contracts import ExposureCancelled, Limits, RiskEvent
from risk_service.domain import AccountView, MovementRequest, RiskState
from risk_service.events import stream_of
from risk_service.projections import RiskStatesProjection, inline_projections

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
PROJECTIONS: tuple[Projection, ...] = inline_projections()
DEFAULTS = Limits(max_transfer_minor=400, daily_outflow_minor=1_000, max_open_exposure_minor=600,
                  max_movements_per_minute=3)  # fmt: skip
NOISE = [("account-a1", "AccountOpened"), ("saga-s1", "SagaStarted"), ("trade-t1", "HoldPlaced")]
"""Events of other services' streams, which every risk read model ignores."""


@dataclass(frozen=True, slots=True)
class Step:
    """One request about one account, `later_s` seconds after the one before (some decide
    nothing, and then record nothing)."""

    account: int
    action: str
    amount_minor: int
    slot: int
    status: str
    later_s: int


def decide(state: RiskState, step: Step, now: datetime, cancelled: set[str]) -> list[RiskEvent]:
    """The events the domain decides for `step` (`cancelled`: the exposure ids cancelled so
    far, by any account: an exposure id is one transfer leg's, whose payer is one account)."""
    # Commits and releases mostly end an open exposure; now and then one that is not open.
    opened = sorted(state.open_exposures)
    ending = opened[step.slot % len(opened)] if opened else f"t{step.slot}:l"
    transfer_id, leg_id = ending.split(":")
    view = AccountView(state.account_id, "USD", step.status)
    request = MovementRequest(f"t{step.slot}", "l", step.amount_minor, "USD", view, view)
    decisions: dict[str, Callable[[], list[RiskEvent]]] = {
        "limits": lambda: domain.set_limits(state, Limits(
            max_transfer_minor=step.amount_minor, max_movements_per_minute=step.slot + 1)),
        "block": lambda: domain.block(state, "review"),
        "unblock": lambda: domain.unblock(state, "cleared"),
        "assess": lambda: domain.assess(state, request, DEFAULTS, now,
                                        is_cancelled=f"t{step.slot}:l" in cancelled),
        "commit": lambda: domain.commit(state, transfer_id, leg_id, now),
        "release": lambda: domain.release(state, transfer_id, leg_id, now,
                                          is_cancelled=ending in cancelled),
    }  # fmt: skip
    return decisions[step.action]()


def histories(steps: Sequence[Step], accounts: int) -> list[tuple[str, RiskEvent]]:
    """Every account's events in one commit order: (stream id, event)."""
    states = [domain.initial_state(f"acc{i}") for i in range(accounts)]
    now = EPOCH
    recorded: list[tuple[str, RiskEvent]] = []
    cancelled: set[str] = set()
    for step in steps:
        now += timedelta(seconds=step.later_s)
        index = step.account % accounts
        events = decide(states[index], step, now, cancelled)
        cancelled.update(domain.exposure_id(e.transfer_id, e.leg_id)
                         for e in events if isinstance(e, ExposureCancelled))  # fmt: skip
        states[index] = domain.fold(states[index], events)
        recorded.extend((stream_of(states[index].account_id), event) for event in events)
    return recorded


ACTIONS = ["limits", "block", "unblock", "assess", "assess", "assess", "assess", "commit",
           "commit", "release"]  # fmt: skip
steps = st.builds(
    Step,
    account=st.integers(0, 3),
    action=st.sampled_from(ACTIONS),
    amount_minor=st.sampled_from([1, 50, 200, 500]),
    slot=st.integers(0, 4),
    status=st.sampled_from(["open", "open", "open", "frozen"]),
    later_s=st.sampled_from([0, 0, 1, 30, 3_600]),
)


@st.composite
def programs(draw: st.DrawFn) -> tuple[list[RecordedEvent], list[int]]:
    """Recorded events of random risk histories with a little noise, and page sizes."""
    accounts = draw(st.integers(1, 4))
    decided = histories(draw(st.lists(steps, min_size=10, max_size=100)), accounts)
    events: list[tuple[str, str, dict[str, Any]]] = [
        (stream_id, event.event_type, event.model_dump(mode="json")) for stream_id, event in decided
    ]
    for _ in range(draw(st.integers(0, 3))):
        stream_id, event_type = draw(st.sampled_from(NOISE))
        events.insert(draw(st.integers(0, len(events))), (stream_id, event_type, {}))
    versions: dict[str, int] = {}
    recorded = []
    for position, (stream_id, event_type, data) in enumerate(events, start=1):
        versions[stream_id] = versions.get(stream_id, 0) + 1
        recorded.append(RecordedEvent(
            position, stream_id, versions[stream_id], uuid.uuid4(), event_type, data, {},
            EPOCH + timedelta(milliseconds=position), 1, b"", b"",
        ))  # fmt: skip
    pages = draw(st.lists(st.integers(1, 12), min_size=1, max_size=max(1, len(recorded))))
    return recorded, pages


@pytest.fixture(scope="module")
async def schema(pool: asyncpg.Pool) -> AsyncIterator[str]:
    """A schema with two tables of each read model: one applied event by event, one folded."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    await pool.execute(f"create schema {name}")
    for projection in PROJECTIONS:
        for way in ("one", "folded"):
            await pool.execute(projection.create_sql(f"{name}.{projection.table}_{way}"))
    yield name
    await pool.execute(f"drop schema {name} cascade")


async def differing_rows(
    connection: Executor, schema: str, projection: Projection
) -> list[dict[str, Any]]:
    """The rows that differ between the one-by-one and the folded table of `projection`."""
    one, folded = f"{schema}.{projection.table}_one", f"{schema}.{projection.table}_folded"
    rows = await connection.fetch(
        f"select to_jsonb(a) as one, to_jsonb(b) as folded from {one} a"
        f" full join {folded} b using ({', '.join(projection.key_columns)})"
        " where to_jsonb(a) is distinct from to_jsonb(b)"
    )
    return [dict(row) for row in rows]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=programs())
async def test_folded_pages_equal_one_event_at_a_time(
    pool: asyncpg.Pool, schema: str, program: tuple[list[RecordedEvent], list[int]]
) -> None:
    events, pages = program
    async with pool.acquire() as connection:
        tables = [f"{schema}.{p.table}_{way}" for p in PROJECTIONS for way in ("one", "folded")]
        await connection.execute(f"truncate {', '.join(tables)}")
        start = 0
        for size in [*pages, len(events)]:
            page = events[start : start + size]
            start += size
            for projection in PROJECTIONS:
                for event in page:
                    await projection.apply(connection, f"{schema}.{projection.table}_one", event)
                await projection.apply_batch(
                    connection, f"{schema}.{projection.table}_folded", page
                )
        differing = {p.name: await differing_rows(connection, schema, p) for p in PROJECTIONS}
    assert differing == {p.name: [] for p in PROJECTIONS}


def recorded(position: int, account: str, version: int, event: RiskEvent) -> RecordedEvent:
    """`event` as stored at `position`, version `version` of `account`'s risk stream."""
    return RecordedEvent(
        position, stream_of(account), version, uuid.uuid4(), event.event_type,
        event.model_dump(mode="json"), {}, EPOCH + timedelta(milliseconds=position), 1, b"", b"",
    )  # fmt: skip


async def test_a_page_that_skips_a_version_fails_risk_states_as_one_event_at_a_time(
    pool: asyncpg.Pool, schema: str
) -> None:
    projection = RiskStatesProjection()
    blocked = domain.block(domain.initial_state("acc0"), "review")[0]
    unblocked = domain.unblock(domain.evolve(domain.initial_state("acc0"), blocked), "ok")[0]
    page = [recorded(1, "acc0", 1, blocked), recorded(2, "acc0", 3, unblocked)]
    async with pool.acquire() as connection:
        await connection.execute(f"truncate {schema}.risk_states_one, {schema}.risk_states_folded")
        with pytest.raises(AssertionError, match="skipped an event"):
            async with connection.transaction():
                for event in page:
                    await projection.apply(connection, f"{schema}.risk_states_one", event)
        with pytest.raises(AssertionError, match="skipped an event"):
            await projection.apply_batch(connection, f"{schema}.risk_states_folded", page)
