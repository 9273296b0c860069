"""Property: the risk service's commands decided in batches (one transaction each, one clock
reading each) give every command the answer, and leave the risk states, their events and
the decisions table exactly as, deciding each command alone in its own transaction, in the
same order and at the same moment."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import asyncpg
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from eventstore import EventStore, StreamNotFound, UnitOfWork
from ledger.commands import CommandNotReady, CommandRefused, Incoming, one_at_a_time
from ledger.consumers import ConsumedEvent
from ledger.context import RequestContext, bound, new_context
from risk_service import domain, repository
from risk_service.account_view import (
    ViewProgress,
    account_consumer,
    apply_account_event,
    ensure_table,
)
from risk_service.commands import assess_batch, assess_movements, commit_batch, release_batch
from risk_service.contracts import (
    Assess,
    Commit,
    Decision,
    Limits,
    Movement,
    RefusalReason,
    Release,
)
from risk_service.events import stream_of
from risk_service.projections import inline_projections
from tests.integration.test_risk_commands import _FAST, nc, risk_store, token

__all__ = ["nc", "risk_store", "token"]  # fixtures, shared with the risk tests

ACCOUNTS = 4
GHOST = 9
"""An account index the view of accounts never knows."""
EPOCH = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
DEFAULTS = Limits(max_transfer_minor=100, daily_outflow_minor=300, max_open_exposure_minor=200,
                  max_movements_per_minute=3)  # fmt: skip
KINDS: dict[str, type[Assess | Commit | Release]] = {
    "assess": Assess, "commit": Commit, "release": Release,
}  # fmt: skip

Command = Assess | Commit | Release
Handler = Callable[[Sequence[Incoming[Any]], UnitOfWork], Awaitable[Sequence[Any]]]


class ViewAsked:
    """A view of accounts known to be current (or not) for every command, which remembers
    which commands asked."""

    def __init__(self, *, is_current: bool = True) -> None:
        self.asked: list[uuid.UUID] = []
        self._is_current = is_current

    def is_known_current(self, command_id: uuid.UUID) -> bool:
        self.asked.append(command_id)
        return self._is_current

    async def is_current_for(self, command_id: uuid.UUID) -> bool:
        return self._is_current


def handler(kind: str, now: datetime, view: ViewAsked | None = None) -> Handler:
    """The batch handler of `kind`, deciding at `now`."""
    match kind:
        case "assess":
            return partial(assess_batch, defaults=DEFAULTS, now=now, view=view)
        case "commit":
            return partial(commit_batch, now=now)
    return partial(release_batch, now=now)


optional_limit = st.one_of(st.none(), st.sampled_from([0, 40, 120, 250]))
limits = st.builds(
    Limits, max_transfer_minor=optional_limit, daily_outflow_minor=optional_limit,
    max_open_exposure_minor=optional_limit,
    max_movements_per_minute=st.one_of(st.none(), st.integers(1, 4)),
)  # fmt: skip
accounts = st.tuples(
    st.sampled_from(["open", "open", "open", "frozen", "closed"]),
    st.sampled_from(["USD", "USD", "USD", "EUR"]),
    st.one_of(st.none(), limits),
    st.sampled_from([False, False, False, True]),
)
"""An account's status and currency in risk's view, its own limits, whether it is blocked."""
movements_of_a_transfer = st.lists(
    st.tuples(st.sampled_from([0, 1, 2, 3, GHOST]), st.sampled_from([0, 1, 2, 3, GHOST]),
              st.integers(1, 120), st.sampled_from(["USD", "USD", "USD", "EUR"])),
    min_size=1, max_size=3,
)  # fmt: skip
programs = st.tuples(
    st.lists(accounts, min_size=ACCOUNTS, max_size=ACCOUNTS),
    st.lists(movements_of_a_transfer, min_size=1, max_size=5),
    st.lists(st.tuples(st.sampled_from(["assess", "assess", "commit", "release"]),
                       st.lists(st.integers(0, 4), min_size=1, max_size=6),
                       st.sampled_from([0, 0, 1, 61, 86_400])),
             min_size=1, max_size=6),
)  # fmt: skip
"""The accounts; each transfer's movements (from, to, amount, currency); the batches in
order: their kind, the transfer of each command, and the seconds that pass after them."""


@dataclass(frozen=True, slots=True)
class Step:
    """One command, the context its sender sent it in, and the moment of its batch."""

    kind: str
    command: Command
    context: RequestContext
    now: datetime


@pytest.fixture(scope="module")
async def stores(pool: asyncpg.Pool) -> AsyncIterator[tuple[EventStore, EventStore]]:
    """Two risk stores: one for commands alone, one for batches."""
    made = []
    for _ in range(2):
        schema = f"test_{uuid.uuid4().hex[:12]}"
        store = EventStore(pool, schema, inline_projections=inline_projections())
        await store.migrate()
        for projection in store.inline_projections:
            await projection.ensure_table(store)
        await ensure_table(store)
        made.append(store)
    yield made[0], made[1]
    for store in made:
        await pool.execute(f"drop schema {store.schema} cascade")


def account_opened(account_id: str, currency: str, status: str) -> list[ConsumedEvent]:
    """The account events that leave `account_id` with `status` in risk's view."""
    later = {"frozen": "AccountFrozen", "closed": "AccountClosed"}.get(status)
    types = ["AccountOpened", *([later] if later else [])]
    return [
        ConsumedEvent(
            event_id=str(uuid.uuid4()), stream_id=f"account-{account_id}", stream_version=n,
            event_type=event_type, data={"currency": currency}, metadata={},
            recorded_at=EPOCH, global_position=n, subject="", message_id=str(uuid.uuid4()),
            delivery_count=1,
        )
        for n, event_type in enumerate(types, start=1)
    ]  # fmt: skip


async def given_accounts(store: EventStore, ids: Sequence[str], specs: Sequence[Any]) -> None:
    """Each account in risk's view, with its own limits and block (one context for all)."""
    with bound(RequestContext("setup", None, f"00-{'1' * 32}-{'2' * 16}-01")):
        async with store.unit_of_work() as unit:
            for account_id, (status, currency, own_limits, is_blocked) in zip(ids, specs,
                                                                               strict=True):
                for event in account_opened(account_id, currency, status):
                    await apply_account_event(unit.connection, store.schema, event)
                if own_limits is not None:
                    await repository.decide_and_save(
                        unit, account_id, partial(domain.set_limits, limits=own_limits))
                if is_blocked:
                    await repository.decide_and_save(
                        unit, account_id, partial(domain.block, reason="review"))  # fmt: skip


def outcome(result: Decision | CommandRefused) -> Any:
    if isinstance(result, CommandRefused):
        return result.code, result.details
    return result


async def alone(store: EventStore, step: Step, view: ViewAsked) -> Any:
    """The step's command decided alone, in its own transaction and its sender's context."""
    with bound(step.context):
        async with store.unit_of_work() as unit:
            return outcome(await one_at_a_time(handler(step.kind, step.now, view))(
                step.command, unit))  # fmt: skip


async def batched(
    store: EventStore, steps: Sequence[Step], view: ViewAsked | None = None
) -> list[Any]:
    """The steps' commands (of one kind, at one moment) decided together, in one transaction."""
    batch = [Incoming(step.command, step.context) for step in steps]
    async with store.unit_of_work() as unit:
        results = await handler(steps[0].kind, steps[0].now, view)(batch, unit)
    return [outcome(result) for result in results]


async def footprint(store: EventStore, ids: Sequence[str]) -> Any:
    """What the commands left: each account's state, its state row and events (with their
    metadata), and the decisions of the accounts in each one's order (but when each was
    recorded, the time of its transaction)."""
    async with store.pool.acquire() as connection:
        states = [await repository.load(store, connection, account_id) for account_id in ids]
        rows = await connection.fetch(
            f"select account_id, state, version from {store.schema}.risk_states"
            " where account_id = any($1::text[]) order by account_id", list(ids),
        )  # fmt: skip
        decisions = await connection.fetch(
            f"select account_id, transfer_id, leg_id, outcome, reason, detail, amount_minor,"
            f" currency, limits from {store.schema}.risk_decisions"
            " where account_id = any($1::text[]) order by account_id, global_position",
            list(ids),
        )
    streams = []
    for account_id in ids:
        try:
            events = await store.read_stream(stream_of(account_id))
        except StreamNotFound:
            events = []
        streams.append([(e.event_type, e.data, e.metadata) for e in events])
    stored = [(row["account_id"], orjson.loads(row["state"]), row["version"]) for row in rows]
    return states, stored, streams, [dict(row) for row in decisions]


def steps_of(prefix: str, transfers: list[Any], batches: list[Any]) -> list[list[Step]]:
    """The program's batches of commands, each command with a context of its own."""
    legs = [
        tuple(Movement(leg_id=f"l{n}", from_account=f"{prefix}-x{a}",
                       to_account=f"{prefix}-x{b}", amount_minor=amount, currency=currency)
              for n, (a, b, amount, currency) in enumerate(transfer))
        for transfer in transfers
    ]  # fmt: skip
    steps: list[list[Step]] = []
    now = EPOCH
    for kind, transfer_indices, later_s in batches:
        batch = []
        for t in transfer_indices:
            command = KINDS[kind](command_id=uuid.uuid4(), transfer_id=f"{prefix}-t{t % len(legs)}",
                                  movements=legs[t % len(legs)])  # fmt: skip
            batch.append(Step(kind, command, new_context().caused_by(str(command.command_id)),
                              now))  # fmt: skip
        steps.append(batch)
        now += timedelta(seconds=later_s)
    return steps


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=programs)
async def test_batches_decide_as_each_command_alone_in_order(
    stores: tuple[EventStore, EventStore], program: Any
) -> None:
    specs, transfers, commands = program
    one, together = stores
    prefix = secrets.token_hex(4)
    ids = [f"{prefix}-x{n}" for n in (*range(ACCOUNTS), GHOST)]
    for store in stores:
        await given_accounts(store, ids[:ACCOUNTS], specs)
    batches = steps_of(prefix, transfers, commands)
    view_alone, view_batched = ViewAsked(), ViewAsked()

    expected = [await alone(one, step, view_alone) for batch in batches for step in batch]
    got = [result for batch in batches for result in await batched(together, batch, view_batched)]

    assert got == expected
    assert view_batched.asked == view_alone.asked
    assert await footprint(together, ids) == await footprint(one, ids)


def move(amount_minor: int, payer: str, payee: str, leg_id: str = "l0") -> Movement:
    return Movement(leg_id=leg_id, from_account=payer, to_account=payee,
                    amount_minor=amount_minor, currency="USD")  # fmt: skip


def assess(transfer_id: str, *movements: Movement) -> Assess:
    return Assess(command_id=uuid.uuid4(), transfer_id=transfer_id, movements=movements)


async def event_types(store: EventStore, account_id: str) -> list[str]:
    try:
        return [event.event_type for event in await store.read_stream(stream_of(account_id))]
    except StreamNotFound:
        return []


async def test_each_command_of_a_batch_is_decided_on_what_the_earlier_ones_left(
    stores: tuple[EventStore, EventStore],
) -> None:
    store, _ = stores
    prefix = secrets.token_hex(4)
    a, b, c = (f"{prefix}-{name}" for name in "abc")
    await given_accounts(store, [a, b, c], [("open", "USD", None, False)] * 3)
    commands = [
        assess(f"{prefix}-t1", move(90, a, b)),
        # a's third movement would leave 250 open (limit 200): the command keeps only its
        # refusal, so b's approval and a's second one are dropped with it.
        assess(f"{prefix}-t2", move(60, b, c, "one"), move(70, a, c, "two"),
               move(90, a, c, "three")),
        assess(f"{prefix}-t3", move(100, a, c)),  # 190 open: within 200, as t2 left nothing
        assess(f"{prefix}-t4", move(20, a, b)),  # 210 open, after t3
        assess(f"{prefix}-t5", move(100, b, a), move(100, b, c, "l1")),  # 200 open on b
    ]  # fmt: skip

    decisions = await batched(store, [Step("assess", command, new_context(), EPOCH)
                                      for command in commands], ViewAsked())  # fmt: skip

    assert [(d.approved, d.reason) for d in decisions] == [
        (True, None), (False, RefusalReason.EXPOSURE_EXCEEDED), (True, None),
        (False, RefusalReason.EXPOSURE_EXCEEDED), (True, None),
    ]  # fmt: skip
    assert await event_types(store, a) == [
        "ExposureReserved", "MovementRefused", "ExposureReserved", "MovementRefused",
    ]  # fmt: skip
    assert await event_types(store, b) == ["ExposureReserved", "ExposureReserved"]
    assert await event_types(store, c) == []
    async with store.pool.acquire() as connection:
        exposures = [(await repository.load(store, connection, account)).open_exposure_minor
                     for account in (a, b)]  # fmt: skip
    assert exposures == [190, 200]


async def test_the_view_is_asked_only_about_the_commands_it_could_refuse(
    stores: tuple[EventStore, EventStore],
) -> None:
    store, _ = stores
    prefix = secrets.token_hex(4)
    a, b, frozen, ghost = (f"{prefix}-{name}" for name in ("a", "b", "frozen", "ghost"))
    await given_accounts(store, [a, b, frozen], [("open", "USD", None, False)] * 2
                         + [("frozen", "USD", None, False)])  # fmt: skip
    commands = [assess(f"{prefix}-t1", move(10, a, b)), assess(f"{prefix}-t2", move(10, a, ghost)),
                assess(f"{prefix}-t3", move(10, frozen, b))]  # fmt: skip
    batch = [Incoming(command, new_context()) for command in commands]
    behind = ViewAsked(is_current=False)

    with pytest.raises(CommandNotReady):
        async with store.unit_of_work() as unit:
            await assess_batch(batch, unit, DEFAULTS, EPOCH, behind)
    current = ViewAsked()
    async with store.unit_of_work() as unit:
        decided = await assess_batch(batch, unit, DEFAULTS, EPOCH, current)

    assert behind.asked == [commands[1].command_id]  # the first not ready fails the batch
    assert current.asked == [commands[1].command_id, commands[2].command_id]
    assert [outcome(d).reason for d in decided] == [
        None, RefusalReason.UNKNOWN_ACCOUNT, RefusalReason.ACCOUNT_FROZEN,
    ]  # fmt: skip


async def test_load_many_folds_what_a_state_row_has_not_yet(
    stores: tuple[EventStore, EventStore],
) -> None:
    store, _ = stores
    unprojected = EventStore(store.pool, store.schema)  # appends that no row follows
    prefix = secrets.token_hex(4)
    synced, behind, rowless, unknown = (f"{prefix}-{name}" for name in ("s", "b", "r", "u"))
    for account_id in (synced, behind):
        async with store.unit_of_work() as unit:
            await repository.decide_and_save(unit, account_id, partial(
                domain.set_limits, limits=Limits(max_transfer_minor=5)))  # fmt: skip
    for account_id in (behind, rowless):
        async with unprojected.unit_of_work() as unit:
            await repository.decide_and_save(unit, account_id,
                                             partial(domain.block, reason="review"))
    async with store.pool.acquire() as connection:
        rows = await connection.fetchval(
            f"select count(*) from {store.schema}.risk_states where account_id = any($1::text[])",
            [behind, rowless],
        )  # fmt: skip
        alone = {account_id: await repository.load(store, connection, account_id)
                 for account_id in sorted((synced, behind, rowless, unknown))}  # fmt: skip
        async with connection.transaction():
            together = await repository.load_many(store, connection, alone)

    assert rows == 1  # behind's, at its first event
    assert together == alone
    assert [(state.version, state.blocked_reason) for state in together.values()] == [
        (2, "review"), (1, "review"), (1, None), (0, None),
    ]  # ordered by id: b, r, s, u


class Seconds:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now_s = 1_000.0

    def __call__(self) -> float:
        return self.now_s


async def test_a_command_the_view_was_found_current_for_is_decided_at_once(
    nc: Client, risk_store: EventStore, token: str
) -> None:
    """A command not ready carries the catch-up the service runs with no transaction open
    (the only place NATS is asked); once that found the view current, the command is
    decided at once, while another is still within its own grace."""
    consumer = account_consumer(nc, risk_store, _FAST, durable_name=token,
                                subject_prefix=f"ledger.{token}.account")  # fmt: skip
    await consumer.ensure()  # nothing published: it has handled everything there is
    seconds = Seconds()
    progress = ViewProgress(consumer, 1.0, clock=seconds)
    await given_accounts(risk_store, ["b"], [("open", "USD", None, False)])
    first, second = assess("t1", move(10, "ghost-1", "b")), assess("t2", move(10, "ghost-2", "b"))

    async def assess_alone(command: Assess) -> Decision:
        async with risk_store.unit_of_work() as unit:
            return await assess_movements(command, unit, DEFAULTS, EPOCH, progress)

    async def caught_up(not_ready: CommandNotReady) -> bool:
        assert not_ready.catch_up is not None
        return await not_ready.catch_up()

    with pytest.raises(CommandNotReady) as first_ask:
        await assess_alone(first)
    is_ready_within_grace = await caught_up(first_ask.value)
    seconds.now_s += 1.0
    with pytest.raises(CommandNotReady) as batch_ask:
        async with risk_store.unit_of_work() as unit:
            await assess_batch([Incoming(c, new_context()) for c in (first, second)], unit,
                               DEFAULTS, EPOCH, progress)  # fmt: skip
    is_ready_after_grace = await caught_up(batch_ask.value)  # the first's
    decision = await assess_alone(first)
    with pytest.raises(CommandNotReady) as second_ask:
        await assess_alone(second)

    assert (is_ready_within_grace, is_ready_after_grace) == (False, True)
    assert (decision.approved, decision.reason) == (False, RefusalReason.UNKNOWN_ACCOUNT)
    assert not await caught_up(second_ask.value)  # still within its own grace
