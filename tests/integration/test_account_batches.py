"""Property: the account service's commands decided in batches (one transaction each) give
every command the answer, and leave the accounts, their events and the holds table exactly
as, deciding each command alone in its own transaction, in the same order."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator, Sequence
from functools import partial
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from account_service import repository
from account_service.commands import (
    post_batch,
    post_legs,
    reserve_batch,
    reserve_legs,
    void_batch,
    void_legs,
)
from account_service.contracts import Leg, LegsDone, PostLegs, ReserveLegs, VoidLegs
from account_service.domain import deposit, open_account
from account_service.holds import HoldsProjection
from account_service.projections import BalancesProjection, EntriesProjection
from eventstore import EventStore, UnitOfWork
from ledger.commands import CommandRefused, Incoming
from ledger.context import new_context
from ledger.money import Assets

ACCOUNTS = 4
GHOST = 9
"""An account index that is never opened."""
KINDS = {"reserve": ReserveLegs, "post": PostLegs, "void": VoidLegs}
ASSETS = Assets()


def one_at_a_time(kind: str, command: Any, unit: UnitOfWork) -> Any:
    match kind:
        case "reserve":
            return reserve_legs(command, unit, ASSETS)
        case "post":
            return post_legs(command, unit)
    return void_legs(command, unit)


def in_a_batch(kind: str, batch: Sequence[Incoming[Any]], unit: UnitOfWork) -> Any:
    match kind:
        case "reserve":
            return reserve_batch(batch, unit, ASSETS)
        case "post":
            return post_batch(batch, unit)
    return void_batch(batch, unit)


legs_of_a_transfer = st.lists(
    st.tuples(st.sampled_from([0, 1, 2, 3, GHOST]), st.integers(0, ACCOUNTS - 1),
              st.integers(1, 80)),
    min_size=1, max_size=2,
)  # fmt: skip
programs = st.tuples(
    st.lists(st.integers(0, 100), min_size=ACCOUNTS, max_size=ACCOUNTS),
    st.lists(legs_of_a_transfer, min_size=1, max_size=4),
    st.lists(st.tuples(st.sampled_from(sorted(KINDS)), st.integers(0, 3),
                       st.sampled_from([False, False, False, True])),
             min_size=1, max_size=14),
)  # fmt: skip
"""Opening balances; each transfer's legs (from, to, amount; the same account on both
sides or a ghost account now and then); the commands in order: kind, transfer, and whether
a batch ends after it."""


@pytest.fixture(scope="module")
async def stores(pool: asyncpg.Pool) -> AsyncIterator[tuple[EventStore, EventStore]]:
    """Two account stores: one for commands alone, one for batches."""
    made = []
    for _ in range(2):
        store = EventStore(pool, f"test_{uuid.uuid4().hex[:12]}", inline_projections=[
            BalancesProjection(), EntriesProjection(), HoldsProjection()])  # fmt: skip
        await store.migrate()
        for projection in store.inline_projections:
            await projection.ensure_table(store)
        made.append(store)
    yield made[0], made[1]
    for store in made:
        await pool.execute(f"drop schema {store.schema} cascade")


async def open_accounts(store: EventStore, ids: Sequence[str], balances: Sequence[int]) -> None:
    async with store.unit_of_work() as unit:
        for account_id, balance in zip(ids, balances, strict=True):
            events = open_account(None, account_id, "owner", "USD", 0)
            await repository.save(unit, None, account_id, events)
            if balance:
                await repository.decide_and_save(unit, account_id, partial(
                    deposit, amount_minor=balance, entry_id="d", reference=None))  # fmt: skip


def outcome(result: LegsDone | CommandRefused) -> Any:
    if isinstance(result, CommandRefused):
        return result.code, result.details
    return result


async def alone(store: EventStore, kind: str, command: Any) -> Any:
    try:
        async with store.unit_of_work() as unit:
            return outcome(await one_at_a_time(kind, command, unit))
    except CommandRefused as refusal:
        return outcome(refusal)


async def batched(store: EventStore, kind: str, commands: Sequence[Any]) -> list[Any]:
    batch = [Incoming(command, new_context()) for command in commands]
    async with store.unit_of_work() as unit:
        return [outcome(result) for result in await in_a_batch(kind, batch, unit)]


async def footprint(store: EventStore, ids: Sequence[str], prefix: str) -> Any:
    """What the commands left: each account's state and event types, and the holds table."""
    async with store.pool.acquire() as connection:
        states = [await repository.load(store, connection, account_id) for account_id in ids]
        holds = await connection.fetch(
            f"select hold_id, account_id, side, amount_minor, status from {store.schema}.holds"
            " where hold_id like $1 order by hold_id", f"{prefix}%",
        )  # fmt: skip
        entries = await connection.fetch(
            f"select account_id, entry_id, amount_minor, balance_after_minor"
            f" from {store.schema}.entries where account_id = any($1::text[])"
            " order by account_id, global_position", list(ids),
        )  # fmt: skip
    types = []
    for account_id in ids:
        types.append([e.event_type for e in await store.read_stream(f"account-{account_id}")])
    return states, types, [dict(row) for row in holds], [dict(row) for row in entries]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=programs)
async def test_batches_decide_as_each_command_alone_in_order(
    stores: tuple[EventStore, EventStore], program: Any
) -> None:
    balances, transfers, steps = program
    one, batches = stores
    prefix = secrets.token_hex(4)
    ids = [f"{prefix}-x{n}" for n in range(ACCOUNTS)]
    for store in stores:
        await open_accounts(store, ids, balances)
    legs = [
        tuple(Leg(leg_id=f"l{n}", from_account=f"{prefix}-x{a}", to_account=f"{prefix}-x{b}",
                  amount_minor=amount, currency="USD")
              for n, (a, b, amount) in enumerate(transfer))
        for transfer in transfers
    ]  # fmt: skip
    commands = [
        (kind, KINDS[kind](command_id=uuid.uuid4(), transfer_id=f"{prefix}-t{t % len(legs)}",
                           legs=legs[t % len(legs)]), ends)
        for kind, t, ends in steps
    ]  # fmt: skip

    expected = [await alone(one, kind, command) for kind, command, _ in commands]
    got: list[Any] = []
    batch: list[Any] = []
    for index, (kind, command, ends) in enumerate(commands):
        batch.append(command)
        is_last = index + 1 == len(commands)
        if ends or is_last or commands[index + 1][0] != kind:
            got.extend(await batched(batches, kind, batch))
            batch = []

    assert got == expected
    assert await footprint(batches, ids, prefix) == await footprint(one, ids, prefix)


async def test_a_command_refused_part_way_leaves_the_batch_as_it_found_it(
    stores: tuple[EventStore, EventStore],
) -> None:
    store, _ = stores
    prefix = secrets.token_hex(4)
    a, b, c, d = (f"{prefix}-{name}" for name in "abcd")
    await open_accounts(store, [a, b, c, d], [100, 0, 10, 0])
    first_leg = Leg(leg_id="l0", from_account=a, to_account=b, amount_minor=50, currency="USD")
    short = Leg(leg_id="l1", from_account=c, to_account=d, amount_minor=90, currency="USD")
    after = Leg(leg_id="l0", from_account=a, to_account=b, amount_minor=60, currency="USD")
    refused, placed = await batched(store, "reserve", [
        ReserveLegs(command_id=uuid.uuid4(), transfer_id=f"{prefix}-t1", legs=(first_leg, short)),
        ReserveLegs(command_id=uuid.uuid4(), transfer_id=f"{prefix}-t2", legs=(after,)),
    ])  # fmt: skip

    assert refused[0] == "insufficient_funds"
    assert placed == LegsDone(transfer_id=f"{prefix}-t2",
                              hold_ids=(f"{prefix}-t2:l0:debit", f"{prefix}-t2:l0:credit"))
    async with store.pool.acquire() as connection:
        payer = await repository.require(store, connection, a)
    assert (payer.available_minor, list(payer.open_holds)) == (40, [f"{prefix}-t2:l0:debit"])
