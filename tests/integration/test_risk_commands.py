"""Risk commands over real NATS and PostgreSQL, and risk's account view fed over JetStream.

Tests share one NATS server, so each serves the commands under a service name of its own
and publishes account events under a subject token of its own (`ledger.<token>.account.*`).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial

import asyncpg
import orjson
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from eventstore import EventStore, StreamNotFound, rebuild
from ledger.bus import connect, ensure_streams
from ledger.commands import CommandClient, CommandFailed, CommandService, one_at_a_time
from ledger.consumers import ConsumedEvent, ConsumerOptions, DurableConsumer
from ledger.settings import Settings
from risk_service import domain, repository
from risk_service.account_view import (
    account_consumer,
    account_views,
    apply_account_event,
    ensure_table,
)
from risk_service.commands import assess_movements, commit_batch, register_commands
from risk_service.contracts import (
    Assess,
    Commit,
    Decision,
    Limits,
    Movement,
    RefusalReason,
    Release,
)
from risk_service.domain import AccountView
from risk_service.events import stream_of
from risk_service.projections import inline_projections

DEFAULTS = Limits(
    max_transfer_minor=1_000, daily_outflow_minor=2_000, max_open_exposure_minor=1_800,
    max_movements_per_minute=4,
)  # fmt: skip
_FAST = ConsumerOptions(
    fetch_batch=10, fetch_wait_s=0.2, ack_wait_s=2.0, max_deliver=3, backoff_s=(0.05, 0.1)
)
_GUARD_S = 20.0
"""Bound of every wait for the consumer: a guard against hanging, never an assertion."""


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    client = await connect([nats_url], "test-risk")
    await ensure_streams(client.jetstream(), Settings())
    yield client
    await client.close()


@pytest.fixture
def token() -> str:
    """A service name, subject token and durable name no other test uses."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def risk_store(pool: asyncpg.Pool, schema: str) -> EventStore:
    store = EventStore(pool, schema, inline_projections=inline_projections())
    await store.migrate()
    for projection in store.inline_projections:
        await projection.ensure_table(store)
    await ensure_table(store)
    return store


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def risk(
    nc: Client, risk_store: EventStore, token: str, clock: Clock
) -> AsyncIterator[Callable[[object], Awaitable[Decision]]]:
    """Serve the risk commands as service `<token>`; yield a sender of commands to it."""
    service = CommandService(nc, risk_store, name=token, version="0.1.0")
    register_commands(service, DEFAULTS, clock)
    await service.start()
    client = CommandClient(nc, timeout_s=5.0, max_retries=0)

    async def send(command: object) -> Decision:
        assert isinstance(command, Assess | Commit | Release)
        name = {Assess: "assess", Commit: "commit", Release: "release"}[type(command)]
        return await client.send(f"{token}.{name}", command, Decision)

    try:
        yield send
    finally:
        await service.stop()


# --- helpers -----------------------------------------------------------------------------

_versions: dict[str, int] = {}


def account_event(
    account_id: str, event_type: str, version: int, currency: str = "USD"
) -> ConsumedEvent:
    data = {"account_id": account_id, "owner": "o", "currency": currency,
            "overdraft_limit_minor": 0} if event_type == "AccountOpened" else {}
    event_id = str(uuid.uuid4())
    return ConsumedEvent(
        event_id=event_id, stream_id=f"account-{account_id}", stream_version=version,
        event_type=event_type, data=data, metadata={}, recorded_at=datetime.now(UTC),
        global_position=version, subject="", message_id=event_id, delivery_count=1,
    )  # fmt: skip


async def given_accounts(store: EventStore, *specs: tuple[str, str]) -> None:
    """Open each account (id, status) in risk's view, without NATS."""
    async with store.pool.acquire() as connection:
        for account_id, status in specs:
            await apply_account_event(
                connection, store.schema, account_event(account_id, "AccountOpened", 1)
            )
            later = {"frozen": "AccountFrozen", "closed": "AccountClosed"}.get(status)
            if later is not None:
                await apply_account_event(
                    connection, store.schema, account_event(account_id, later, 2)
                )


def assess(*movements: Movement, transfer_id: str | None = None) -> Assess:
    return Assess(command_id=uuid.uuid4(), transfer_id=transfer_id or f"tr-{uuid.uuid4().hex}",
                  movements=movements)


def commit_of(command: Assess) -> Commit:
    return Commit(command_id=uuid.uuid4(), transfer_id=command.transfer_id,
                  movements=command.movements)


def release_of(command: Assess) -> Release:
    return Release(command_id=uuid.uuid4(), transfer_id=command.transfer_id,
                   movements=command.movements)


def move(amount_minor: int = 100, payer: str = "a", payee: str = "b", leg_id: str = "leg-1",
         currency: str = "USD") -> Movement:
    return Movement(leg_id=leg_id, from_account=payer, to_account=payee,
                    amount_minor=amount_minor, currency=currency)


async def event_types(store: EventStore, account_id: str) -> list[str]:
    try:
        return [event.event_type for event in await store.read_stream(stream_of(account_id))]
    except StreamNotFound:
        return []


# --- decisions ---------------------------------------------------------------------------


async def test_an_approval_reserves_exposure_and_is_audited(
    risk: Callable[[Assess], Awaitable[Decision]], risk_store: EventStore
) -> None:
    await given_accounts(risk_store, ("a", "open"), ("b", "open"))

    decision = await risk(assess(move(500)))

    assert decision.approved
    assert decision.reason is None
    assert await event_types(risk_store, "a") == ["ExposureReserved"]
    row = await risk_store.pool.fetchrow(
        f"select outcome, limits from {risk_store.schema}.risk_decisions"
    )
    assert row is not None
    assert row["outcome"] == "approved"
    assert Limits.model_validate(orjson.loads(row["limits"])) == DEFAULTS


@pytest.mark.parametrize(
    ("payer_status", "payee_status", "amount_minor", "reason"),
    [
        (None, "open", 100, RefusalReason.UNKNOWN_ACCOUNT),
        ("open", None, 100, RefusalReason.UNKNOWN_ACCOUNT),
        ("frozen", "open", 100, RefusalReason.ACCOUNT_FROZEN),
        ("open", "frozen", 100, RefusalReason.ACCOUNT_FROZEN),
        ("closed", "open", 100, RefusalReason.ACCOUNT_CLOSED),
        ("open", "open", 1_001, RefusalReason.LIMIT_EXCEEDED),
    ],
)
async def test_a_refusal_is_a_decision_with_its_reason_and_is_recorded(
    risk: Callable[[Assess], Awaitable[Decision]], risk_store: EventStore,
    payer_status: str | None, payee_status: str | None, amount_minor: int,
    reason: RefusalReason,
) -> None:
    accounts = [(i, s) for i, s in (("a", payer_status), ("b", payee_status)) if s is not None]
    await given_accounts(risk_store, *accounts)

    decision = await risk(assess(move(amount_minor)))

    assert not decision.approved
    assert decision.reason is reason
    assert decision.detail
    assert await event_types(risk_store, "a") == ["MovementRefused"]
    recorded = await risk_store.pool.fetchval(
        f"select reason from {risk_store.schema}.risk_decisions where outcome = 'refused'"
    )
    assert recorded == reason.value


async def test_a_currency_other_than_the_accounts_is_refused(
    risk: Callable[[Assess], Awaitable[Decision]], risk_store: EventStore
) -> None:
    await given_accounts(risk_store, ("a", "open"), ("b", "open"))

    decision = await risk(assess(move(100, currency="EUR")))

    assert decision.reason is RefusalReason.CURRENCY_MISMATCH


async def test_a_blocked_account_is_refused(
    risk: Callable[[Assess], Awaitable[Decision]], risk_store: EventStore
) -> None:
    await given_accounts(risk_store, ("a", "open"), ("b", "open"))
    async with risk_store.unit_of_work() as unit:
        await repository.decide_and_save(unit, "a", lambda s: domain.block(s, "fraud review"))

    decision = await risk(assess(move(100)))

    assert decision.reason is RefusalReason.ACCOUNT_BLOCKED
    assert decision.detail is not None
    assert "fraud review" in decision.detail


async def test_daily_outflow_exposure_and_velocity_are_refused(
    risk: Callable[[Assess], Awaitable[Decision]], risk_store: EventStore, clock: Clock
) -> None:
    await given_accounts(risk_store, ("a", "open"), ("b", "open"), ("c", "open"))
    first = await risk(assess(move(1_000)))
    second = await risk(assess(move(800)))

    exposure = await risk(assess(move(100)))  # 1,800 open already
    clock.advance(timedelta(seconds=1))
    third = await risk(assess(move(150, payer="c")))
    fourth = await risk(assess(move(150, payer="c")))
    fifth = await risk(assess(move(150, payer="c")))
    sixth = await risk(assess(move(150, payer="c")))
    velocity = await risk(assess(move(150, payer="c")))

    assert first.approved
    assert second.approved
    assert exposure.reason is RefusalReason.EXPOSURE_EXCEEDED
    assert all(d.approved for d in (third, fourth, fifth, sixth))
    assert velocity.reason is RefusalReason.VELOCITY


async def test_committed_outflow_counts_for_a_day_and_released_exposure_does_not(
    risk: Callable[[object], Awaitable[Decision]], risk_store: EventStore, clock: Clock
) -> None:
    await given_accounts(risk_store, ("a", "open"), ("b", "open"))
    committed = assess(move(1_000))
    released = assess(move(700))
    assert (await risk(committed)).approved
    assert (await risk(released)).approved
    assert (await risk(commit_of(committed))).approved
    assert (await risk(release_of(released))).approved
    clock.advance(timedelta(minutes=2))

    within = await risk(assess(move(1_000)))
    over = await risk(assess(move(1)))
    clock.advance(timedelta(hours=24))
    next_day = await risk(assess(move(700)))

    assert within.approved  # the released 700 freed the limit
    assert over.reason is RefusalReason.DAILY_OUTFLOW_EXCEEDED
    assert next_day.approved  # the committed 1,000 left the window; the open 1,000 counts
    assert await event_types(risk_store, "a") == [
        "ExposureReserved", "ExposureReserved", "ExposureCommitted", "ExposureReleased",
        "ExposureReserved", "MovementRefused", "ExposureReserved",
    ]  # fmt: skip


async def test_commit_and_release_are_idempotent_and_end_an_exposure_once(
    risk: Callable[[object], Awaitable[Decision]], risk_store: EventStore
) -> None:
    await given_accounts(risk_store, ("a", "open"), ("b", "open"))
    command = assess(move(300))
    await risk(command)

    await risk(commit_of(command))
    await risk(commit_of(command))
    await risk(release_of(command))
    await risk(release_of(command))

    # The release found nothing open: it releases nothing, only cancels (once), so that a
    # late assessment of this leg would be refused.
    assert await event_types(risk_store, "a") == [
        "ExposureReserved", "ExposureCommitted", "ExposureCancelled",
    ]  # fmt: skip
    assert (await repository.load(risk_store, risk_store.pool, "a")).open_exposures == {}


async def test_more_than_64_bits_of_outflow_in_one_minute_still_commits(
    risk_store: EventStore, clock: Clock
) -> None:
    # Without a daily limit, 20 movements of the largest amount (10**18) leave one account
    # in one minute: more than the 64 bits orjson writes into the state row.
    await given_accounts(risk_store, ("a", "open"), ("b", "open"))
    commit = one_at_a_time(partial(commit_batch, now=clock()))
    for _ in range(20):
        command = assess(move(10**18))
        async with risk_store.unit_of_work() as unit:
            approval = await assess_movements(command, unit, Limits(), clock())
        async with risk_store.unit_of_work() as unit:
            await commit(commit_of(command), unit)

    state = await repository.load(risk_store, risk_store.pool, "a")

    assert approval.approved
    assert state.outflow_minor(clock()) == 20 * 10**18
    for projection in risk_store.inline_projections:
        assert (await rebuild(risk_store, projection, verify=True)).differences == []


async def test_commit_and_release_end_the_exposure_of_every_movement_of_a_trade(
    risk: Callable[[object], Awaitable[Decision]], risk_store: EventStore
) -> None:
    await given_accounts(risk_store, ("a", "open"), ("b", "open"), ("c", "open"),
                         ("d", "open"))  # fmt: skip
    committed = assess(move(300, "a", "b", "cash"), move(7, "b", "a", "asset"))
    released = assess(move(200, "c", "d", "cash"), move(5, "d", "c", "asset"))
    assert (await risk(committed)).approved
    assert (await risk(released)).approved

    assert (await risk(commit_of(committed))).approved
    assert (await risk(release_of(released))).approved

    ended = {"a": "ExposureCommitted", "b": "ExposureCommitted",
             "c": "ExposureReleased", "d": "ExposureReleased"}  # fmt: skip
    for account_id, last in ended.items():
        assert await event_types(risk_store, account_id) == ["ExposureReserved", last]
        state = await repository.load(risk_store, risk_store.pool, account_id)
        assert state.open_exposures == {}, account_id


async def test_a_release_before_its_assessment_refuses_the_assessment_when_it_arrives(
    risk: Callable[[object], Awaitable[Decision]], risk_store: EventStore
) -> None:
    await given_accounts(risk_store, ("a", "open"), ("b", "open"))
    command = assess(move(300))

    released = await risk(release_of(command))  # the saga gave up waiting for the assess
    late = await risk(command)  # ...which was only slow

    assert released.approved
    assert (late.approved, late.reason) == (False, RefusalReason.CANCELLED)
    assert await event_types(risk_store, "a") == ["ExposureCancelled", "MovementRefused"]
    assert (await repository.load(risk_store, risk_store.pool, "a")).open_exposures == {}


async def test_a_repeated_command_id_is_decided_once(
    risk: Callable[[Assess], Awaitable[Decision]], risk_store: EventStore
) -> None:
    await given_accounts(risk_store, ("a", "open"), ("b", "open"))
    approve, refuse = assess(move(100)), assess(move(5_000))

    replies = await asyncio.gather(*(risk(approve) for _ in range(4)))
    refusals = [await risk(refuse), await risk(refuse)]

    assert len(set(replies)) == 1
    assert refusals[0] == refusals[1]
    assert await event_types(risk_store, "a") == ["ExposureReserved", "MovementRefused"]


async def test_assess_is_all_or_nothing(
    risk: Callable[[Assess], Awaitable[Decision]], risk_store: EventStore
) -> None:
    await given_accounts(risk_store, ("a", "open"), ("b", "open"), ("c", "frozen"))
    command = assess(move(100, "a", "b", "cash"), move(100, "b", "c", "asset"))

    decision = await risk(command)

    assert decision.reason is RefusalReason.ACCOUNT_FROZEN
    assert await event_types(risk_store, "a") == []
    assert await event_types(risk_store, "b") == ["MovementRefused"]
    state = await repository.load(risk_store, risk_store.pool, "a")
    assert state.open_exposure_minor == 0


async def test_movements_of_one_payer_are_assessed_together(
    risk: Callable[[Assess], Awaitable[Decision]], risk_store: EventStore
) -> None:
    await given_accounts(risk_store, ("a", "open"), ("b", "open"), ("c", "open"))
    together = assess(move(900, "a", "b", "one"), move(900, "a", "c", "two"))
    too_much = assess(move(900, "a", "b", "one"), move(900, "a", "c", "two"),
                      move(900, "a", "c", "three"))

    approved = await risk(together)
    refused = await risk(too_much)

    assert approved.approved
    assert refused.reason is RefusalReason.DAILY_OUTFLOW_EXCEEDED
    assert await event_types(risk_store, "a") == [
        "ExposureReserved", "ExposureReserved", "MovementRefused", "MovementRefused",
        "MovementRefused",
    ]  # fmt: skip


async def test_concurrent_assessments_of_one_account_never_overrun_its_limit(
    risk: Callable[[Assess], Awaitable[Decision]], risk_store: EventStore
) -> None:
    await given_accounts(risk_store, ("a", "open"), ("b", "open"))

    decisions = await asyncio.gather(*(risk(assess(move(300))) for _ in range(12)))

    assert sum(d.approved for d in decisions) == 4  # velocity 4 a minute; 1,200 < 1,800
    state = await repository.load(risk_store, risk_store.pool, "a")
    assert state.open_exposure_minor == 1_200


# --- the account view over JetStream -----------------------------------------------------


async def publish(
    js: JetStreamContext, token: str, event: ConsumedEvent, *, with_msg_id: bool = True
) -> None:
    body = {
        "event_id": event.event_id, "stream_id": event.stream_id,
        "stream_version": event.stream_version, "event_type": event.event_type,
        "data": event.data, "metadata": event.metadata,
        "recorded_at": event.recorded_at.isoformat(), "global_position": event.global_position,
    }  # fmt: skip
    headers = {"Nats-Msg-Id": event.event_id} if with_msg_id else {}
    await js.publish(f"ledger.{token}.account.{event.event_type}", orjson.dumps(body),
                     headers=headers)


@contextlib.asynccontextmanager
async def consuming(
    nc: Client, store: EventStore, token: str
) -> AsyncIterator[DurableConsumer]:
    consumer = account_consumer(nc, store, _FAST, durable_name=token,
                                subject_prefix=f"ledger.{token}.account")
    task = asyncio.create_task(consumer.run())
    try:
        yield consumer
    finally:
        consumer.stop()
        await asyncio.wait_for(task, timeout=_GUARD_S)


async def wait_until(is_done: Callable[[], Awaitable[bool]]) -> None:
    """Return once `is_done()` holds, or when the guard elapses (the assertions then tell)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_GUARD_S):
            while True:
                if await is_done():
                    return
                await asyncio.sleep(0.02)


async def view_of(store: EventStore, account_id: str) -> AccountView | None:
    return (await account_views(store.pool, store.schema, [account_id])).get(account_id)


async def test_an_account_frozen_over_nats_is_refused(
    nc: Client, risk_store: EventStore, token: str,
    risk: Callable[[Assess], Awaitable[Decision]],
) -> None:
    js = nc.jetstream()
    for account_id in ("a", "b"):
        await publish(js, token, account_event(account_id, "AccountOpened", 1))
    async with consuming(nc, risk_store, token) as consumer:
        await wait_until(lambda: _is_status(risk_store, "b", "open"))
        assert (await risk(assess(move(100)))).approved

        await publish(js, token, account_event("a", "AccountFrozen", 2))
        await wait_until(lambda: _is_status(risk_store, "a", "frozen"))
        decision = await risk(assess(move(100)))
        pending = await consumer.pending_count()

    assert decision.reason is RefusalReason.ACCOUNT_FROZEN
    assert pending == 0


async def test_redelivered_and_late_account_events_are_harmless(
    nc: Client, risk_store: EventStore, token: str
) -> None:
    js = nc.jetstream()
    opened = account_event("a", "AccountOpened", 1, currency="EUR")
    frozen = account_event("a", "AccountFrozen", 2)
    unfrozen = account_event("a", "AccountUnfrozen", 3)
    deposited = account_event("a", "Deposited", 4)
    await publish(js, token, frozen)  # out of order: frozen before opened
    await publish(js, token, opened)
    await publish(js, token, frozen, with_msg_id=False)  # the same event again
    await publish(js, token, deposited)  # not a lifecycle event: ignored
    async with consuming(nc, risk_store, token) as consumer:
        await wait_until(lambda: _is_status(risk_store, "a", "frozen"))
        frozen_view = await view_of(risk_store, "a")
        await publish(js, token, unfrozen)
        await publish(js, token, opened, with_msg_id=False)  # an old event, redelivered
        await wait_until(lambda: consumer_done(js, consumer))
    async with risk_store.pool.acquire() as connection:
        await apply_account_event(connection, risk_store.schema, frozen)  # late, again

    assert frozen_view == AccountView("a", "EUR", "frozen")
    assert await view_of(risk_store, "a") == AccountView("a", "EUR", "open")
    version = await risk_store.pool.fetchval(
        f"select version from {risk_store.schema}.risk_accounts where account_id = 'a'"
    )
    assert version == 3


async def consumer_done(js: JetStreamContext, consumer: DurableConsumer) -> bool:
    info = await js.consumer_info(consumer.options.stream, consumer.durable_name)
    return (info.num_pending or 0) == 0 and (info.num_ack_pending or 0) == 0


async def _is_status(store: EventStore, account_id: str, status: str) -> bool:
    view = await view_of(store, account_id)
    return view is not None and view.status == status


class View:
    """A view of accounts current, or not, for every command, as the test says."""

    def __init__(self) -> None:
        self.is_current = False

    def is_known_current(self, _: uuid.UUID) -> bool:
        return self.is_current

    async def is_current_for(self, _: uuid.UUID) -> bool:
        return self.is_current


async def test_an_account_unknown_while_the_view_catches_up_is_asked_again_not_refused(
    nc: Client, risk_store: EventStore, token: str, clock: Clock
) -> None:
    """An account opened a moment ago may not be in risk's view yet: no refusal, no event,
    an error reply the saga retries; once the view has caught up, unknown is refused."""
    view = View()
    service = CommandService(nc, risk_store, name=token, version="0.1.0")
    register_commands(service, DEFAULTS, clock, view)
    client = CommandClient(nc, timeout_s=5.0, max_retries=0)
    await given_accounts(risk_store, ("b", "open"))
    command = assess(move(payer="a", payee="b"))
    await service.start()
    try:
        with pytest.raises(CommandFailed) as not_ready:
            await client.send(f"{token}.assess", command, Decision)
        events_while_behind = await event_types(risk_store, "a")
        view.is_current = True
        decision = await client.send(f"{token}.assess", command, Decision)
    finally:
        await service.stop()

    assert not_ready.value.code == "503"
    assert events_while_behind == []
    assert (decision.approved, decision.reason) == (False, RefusalReason.UNKNOWN_ACCOUNT)


async def test_every_risk_read_model_equals_its_rebuild(
    risk: Callable[[object], Awaitable[Decision]], risk_store: EventStore
) -> None:
    await given_accounts(risk_store, ("a", "open"), ("b", "open"))
    approved = assess(move(100))
    await risk(approved)
    await risk(commit_of(approved))
    await risk(assess(move(5_000)))  # refused: over the per-movement limit

    for projection in risk_store.inline_projections:
        report = await rebuild(risk_store, projection, verify=True)

        assert report.events > 0
        assert report.differences == [], projection.name
