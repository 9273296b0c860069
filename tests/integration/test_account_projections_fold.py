"""Property: the account read models (`balances`, `entries`, `holds`) folded a page at a time
(`apply_batch`: an append's unit of work, a rebuild's pages) are row for row what applying
each event alone gives, whatever the accounts' histories, their interleaving and the page
breaks. Histories are decided by the domain's own rules, so every one is a valid one."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from account_service import domain
from account_service.contracts import (
    AccountEvent,
    EntryKind,
    HoldCancelled,
    HoldPosted,
    HoldSide,
    HoldVoided,
    MovementKind,
)
from account_service.domain import AccountState, Hold, HoldStatus
from account_service.errors import AccountError
from account_service.events import stream_of
from account_service.holds import HoldsProjection
from account_service.projections import BalancesProjection, EntriesProjection
from eventstore import Projection, RecordedEvent
from eventstore._db import Executor

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
PROJECTIONS: tuple[Projection, ...] = (BalancesProjection(), EntriesProjection(), HoldsProjection())
ENDED_BY = {"HoldPosted": HoldStatus.POSTED, "HoldVoided": HoldStatus.VOIDED,
            "HoldCancelled": HoldStatus.CANCELLED}  # fmt: skip
NOISE = [("saga-s1", "SagaStarted"), ("risk-r1", "ExposureReserved"), ("trade-t1", "HoldPlaced")]
"""Events of other services' streams, which every account read model ignores."""


@dataclass(frozen=True, slots=True)
class Step:
    """One request to one account (some are refused, and then record nothing)."""

    account: int
    action: str
    amount_minor: int
    slot: int
    side: HoldSide
    kind: MovementKind


@dataclass(slots=True)
class Account:
    """An account as the adapter sees it: its state, and how its ended holds ended."""

    account_id: str
    state: AccountState | None = None
    ended: dict[str, HoldStatus] = field(default_factory=dict)


def decide(account: Account, step: Step) -> list[AccountEvent]:
    """The events the domain decides for `step` (raises AccountError when it refuses)."""
    state = account.state
    if state is None:
        return domain.open_account(None, account.account_id, "owner", "USD", step.amount_minor)
    hold_id = f"t{step.slot}:{account.account_id}:{step.side.value}"
    hold = Hold(hold_id, step.side, step.amount_minor, f"t{step.slot}", step.kind)
    # Posts and voids mostly end an open hold; "cancel" voids the step's own hold id, which
    # is often one never placed (a HoldCancelled), or one that ended (refused, or nothing).
    opened = sorted(state.open_holds)
    ending = state.open_holds[opened[step.slot % len(opened)]] if opened else hold
    decisions: dict[str, Callable[[], list[AccountEvent]]] = {
        "deposit": lambda: domain.deposit(state, step.amount_minor, f"d{step.slot}", "ref"),
        "withdraw": lambda: domain.withdraw(state, step.amount_minor, f"w{step.slot}", None),
        "place": lambda: domain.place_hold(state, hold, "USD", ended=account.ended),
        "post": lambda: domain.post_hold(state, ending.hold_id, ended=account.ended),
        "void": lambda: domain.void_hold(
            state, ending.hold_id, ending.side, ending.transfer_id, ended=account.ended
        ),
        "cancel": lambda: domain.void_hold(
            state, hold_id, step.side, hold.transfer_id, ended=account.ended
        ),
        "freeze": lambda: domain.freeze(state, "review"),
        "unfreeze": lambda: domain.unfreeze(state),
        "close": lambda: domain.close(state),
    }
    return decisions[step.action]()


def histories(steps: Sequence[Step], accounts: int) -> list[tuple[str, AccountEvent]]:
    """Every account's events in one commit order: (stream id, event)."""
    known = [Account(f"acc{i}") for i in range(accounts)]
    recorded = []
    for step in steps:
        account = known[step.account % accounts]
        try:
            events = decide(account, step)
        except AccountError:
            continue
        for event in events:
            account.state = domain.evolve(account.state, event)
            if isinstance(event, HoldPosted | HoldVoided | HoldCancelled):
                account.ended[event.hold_id] = ENDED_BY[event.event_type]
            recorded.append((stream_of(account.account_id), event))
    return recorded


ACTIONS = ["deposit", "deposit", "withdraw", "place", "place", "place", "post", "post", "void",
           "cancel", "freeze", "unfreeze", "close"]  # fmt: skip
steps = st.builds(
    Step,
    account=st.integers(0, 3),
    action=st.sampled_from(ACTIONS),
    amount_minor=st.sampled_from([0, 1, 5, 50, 500]),
    slot=st.integers(0, 2),
    side=st.sampled_from(HoldSide),
    kind=st.sampled_from([EntryKind.TRANSFER, EntryKind.TRADE]),
)


@st.composite
def programs(draw: st.DrawFn) -> tuple[list[RecordedEvent], list[int]]:
    """Recorded events of random account histories with a little noise, and page sizes."""
    accounts = draw(st.integers(1, 4))
    # At least 20 steps: a shorter list is mostly accounts being opened.
    decided = histories(draw(st.lists(steps, min_size=20, max_size=120)), accounts)
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


def recorded(position: int, account: str, version: int, event: AccountEvent) -> RecordedEvent:
    """`event` as stored at `position`, version `version` of `account`'s stream."""
    return RecordedEvent(
        position, stream_of(account), version, uuid.uuid4(), event.event_type,
        event.model_dump(mode="json"), {}, EPOCH + timedelta(milliseconds=position), 1, b"", b"",
    )  # fmt: skip


OPENED = domain.open_account(None, "acc0", "owner", "USD", 100)[0]
PLACED = domain.place_hold(
    domain.evolve(None, OPENED), Hold("t0:acc0:debit", HoldSide.DEBIT, 5, "t0", EntryKind.TRANSFER),
    "USD", ended={},
)[0]  # fmt: skip
POSTED = domain.post_hold(domain.evolve(domain.evolve(None, OPENED), PLACED), "t0:acc0:debit",
                          ended={})[0]  # fmt: skip
BROKEN_PAGES = {
    "a hold posted that was never placed": (HoldsProjection(), [OPENED, POSTED]),
    "a hold posted before it was placed": (HoldsProjection(), [OPENED, POSTED, PLACED]),
    "a hold posted twice": (HoldsProjection(), [OPENED, PLACED, POSTED, POSTED]),
}


@pytest.mark.parametrize("broken", list(BROKEN_PAGES))
async def test_a_page_that_breaks_a_hold_rule_fails_as_one_event_at_a_time(
    pool: asyncpg.Pool, schema: str, broken: str
) -> None:
    projection, history = BROKEN_PAGES[broken]
    page = [recorded(i, "acc0", i, event) for i, event in enumerate(history, start=1)]
    async with pool.acquire() as connection:
        for way in ("one", "folded"):
            await connection.execute(f"truncate {schema}.{projection.table}_{way}")
        with pytest.raises(AssertionError, match="hold ends once"):
            async with connection.transaction():
                for event in page:
                    await projection.apply(connection, f"{schema}.{projection.table}_one", event)
        with pytest.raises(AssertionError, match="hold ends once"):
            await projection.apply_batch(connection, f"{schema}.{projection.table}_folded", page)


async def test_a_page_that_skips_a_version_fails_balances_as_one_event_at_a_time(
    pool: asyncpg.Pool, schema: str
) -> None:
    projection = BalancesProjection()
    page = [recorded(1, "acc0", 1, OPENED), recorded(2, "acc0", 3, PLACED)]
    async with pool.acquire() as connection:
        await connection.execute(f"truncate {schema}.balances_one, {schema}.balances_folded")
        with pytest.raises(AssertionError, match="skipped an event"):
            async with connection.transaction():
                for event in page:
                    await projection.apply(connection, f"{schema}.balances_one", event)
        with pytest.raises(AssertionError, match="skipped an event"):
            await projection.apply_batch(connection, f"{schema}.balances_folded", page)
