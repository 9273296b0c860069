"""Risk refuses on its view of accounts only once the view holds what was published before
the command: an account unfrozen (or opened) a moment ago is asked about again, not refused,
and an unknown account is refused even while account events keep flowing.

(Found by the system tests: a transfer right after an unfreeze was rejected `account_frozen`
by risk's lagging view; a transfer from an account opened a moment before was rejected
`unknown_account` while the account service's relay had not published it yet; and under a
steady flow of account events the view was never "caught up", so a transfer to an unknown
account failed after its retries instead of being rejected `unknown_account`.)
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from eventstore import EventStore
from ledger.commands import CommandClient, CommandFailed, CommandService
from ledger.consumers import DurableConsumer
from risk_service.account_view import ViewProgress, account_consumer
from risk_service.commands import register_commands
from risk_service.contracts import Assess, Decision, RefusalReason
from tests.integration.test_risk_commands import (
    _FAST,
    _GUARD_S,
    DEFAULTS,
    Clock,
    _is_status,
    account_event,
    assess,
    clock,
    consumer_done,
    consuming,
    given_accounts,
    move,
    nc,
    publish,
    risk_store,
    token,
    wait_until,
)

__all__ = ["clock", "nc", "risk_store", "token"]  # fixtures, shared with the risk tests



class Seconds:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now_s = 1_000.0

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def seconds() -> Seconds:
    return Seconds()


@pytest.fixture
def grace_s() -> float:
    """How long after a command's first ask the view may be trusted (0: at once)."""
    return 0.0


@pytest.fixture
async def view_consumer(nc: Client, risk_store: EventStore, token: str) -> DurableConsumer:
    """The view's durable consumer, as the service asks it about its progress (the tests
    run and stop a consumer of the same durable by hand)."""
    consumer = account_consumer(nc, risk_store, _FAST, durable_name=token,
                                subject_prefix=f"ledger.{token}.account")
    await consumer.ensure()  # the durable exists from the start, as in the service
    return consumer


@pytest.fixture
async def ask(nc: Client, risk_store: EventStore, token: str, clock: Clock, seconds: Seconds,
              grace_s: float, view_consumer: DurableConsumer,
              ) -> AsyncIterator[CommandClient]:  # fmt: skip
    """Risk's commands served as `<token>`, deciding with a ViewProgress of `view_consumer`."""
    progress = ViewProgress(view_consumer, grace_s, clock=seconds)
    service = CommandService(nc, risk_store, name=token, version="0.1.0")
    register_commands(service, DEFAULTS, clock, progress)
    await service.start()
    try:
        yield CommandClient(nc, timeout_s=5.0, max_retries=0)
    finally:
        await service.stop()


async def send(client: CommandClient, token: str, command: Assess) -> Decision:
    return await client.send(f"{token}.assess", command, Decision)


async def unfrozen_a_moment_ago(nc: Client, risk_store: EventStore, token: str
                                ) -> JetStreamContext:  # fmt: skip
    """Accounts "a" and "b" opened, "a" frozen in the view, and its unfreeze published but
    not in the view yet."""
    js = nc.jetstream()
    for account_id in ("a", "b"):
        await publish(js, token, account_event(account_id, "AccountOpened", 1))
    await publish(js, token, account_event("a", "AccountFrozen", 2))
    async with consuming(nc, risk_store, token):
        await wait_until(lambda: _is_status(risk_store, "a", "frozen"))
    await publish(js, token, account_event("a", "AccountUnfrozen", 3))
    return js


async def test_an_account_unfrozen_a_moment_ago_is_asked_again_then_approved(
    nc: Client, risk_store: EventStore, token: str, ask: CommandClient
) -> None:
    js = await unfrozen_a_moment_ago(nc, risk_store, token)
    command = assess(move(100))

    with pytest.raises(CommandFailed) as not_ready:
        await send(ask, token, command)
    async with consuming(nc, risk_store, token):
        await wait_until(lambda: _is_status(risk_store, "a", "open"))
    await publish(js, token, account_event("b", "Deposited", 2))  # the flow goes on
    decision = await send(ask, token, command)

    assert not_ready.value.code == "503"
    assert decision.approved


async def test_an_unknown_account_is_refused_while_account_events_keep_flowing(
    nc: Client, risk_store: EventStore, token: str, ask: CommandClient
) -> None:
    js = nc.jetstream()
    await publish(js, token, account_event("b", "AccountOpened", 1))
    await publish(js, token, account_event("b", "Deposited", 2))
    command = assess(move(100, payer=f"unknown-{uuid.uuid4().hex[:8]}"))

    with pytest.raises(CommandFailed) as not_ready:
        await send(ask, token, command)  # the view is behind: ask again
    async with consuming(nc, risk_store, token) as consumer:
        await wait_until(lambda: consumer_done(js, consumer))
    await publish(js, token, account_event("b", "Deposited", 3))  # never quite caught up
    decision = await send(ask, token, command)

    assert not_ready.value.code == "503"
    assert (decision.approved, decision.reason) == (False, RefusalReason.UNKNOWN_ACCOUNT)


async def test_a_frozen_account_in_a_current_view_is_refused_at_once(
    nc: Client, risk_store: EventStore, token: str, ask: CommandClient
) -> None:
    js = nc.jetstream()
    for account_id in ("a", "b"):
        await publish(js, token, account_event(account_id, "AccountOpened", 1))
    await publish(js, token, account_event("a", "AccountFrozen", 2))
    async with consuming(nc, risk_store, token) as consumer:
        await wait_until(lambda: consumer_done(js, consumer))

    decision = await send(ask, token, assess(move(100)))

    assert (decision.approved, decision.reason) == (False, RefusalReason.ACCOUNT_FROZEN)


@pytest.mark.parametrize("grace_s", [1.0])
async def test_nothing_is_refused_on_the_views_word_before_the_grace_has_passed(
    nc: Client, risk_store: EventStore, token: str, ask: CommandClient, seconds: Seconds
) -> None:
    # The account service's relay may not have published an account opened a moment ago:
    # even a view that has handled everything is not trusted before the grace has passed.
    js = nc.jetstream()
    await publish(js, token, account_event("b", "AccountOpened", 1))
    async with consuming(nc, risk_store, token) as consumer:
        await wait_until(lambda: consumer_done(js, consumer))
    command = assess(move(100, payer="opened-a-moment-ago"))

    with pytest.raises(CommandFailed) as too_soon:
        await send(ask, token, command)
    seconds.now_s += 0.5
    with pytest.raises(CommandFailed) as still_too_soon:
        await send(ask, token, command)
    seconds.now_s += 0.5
    decision = await send(ask, token, command)

    assert (too_soon.value.code, still_too_soon.value.code) == ("503", "503")
    assert (decision.approved, decision.reason) == (False, RefusalReason.UNKNOWN_ACCOUNT)


async def test_the_view_is_asked_about_with_no_lock_held_and_no_transaction_open(
    risk_store: EventStore, token: str, ask: CommandClient, view_consumer: DurableConsumer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Asking NATS inside the batch's transaction held the payer's risk stream lock and a
    # pooled connection for as long as NATS took (its whole timeout under a partition),
    # stalling every other risk command on the account.
    await given_accounts(risk_store, ("b", "open"))  # "a" is unknown: the view is asked
    parked, resume = asyncio.Event(), asyncio.Event()
    last_sequence = view_consumer.stream_last_sequence

    async def slow_last_sequence() -> int:
        parked.set()
        await resume.wait()  # NATS is slow to answer
        return await last_sequence()

    monkeypatch.setattr(view_consumer, "stream_last_sequence", slow_last_sequence)
    sending = asyncio.create_task(send(ask, token, assess(move(100))))
    await asyncio.wait_for(parked.wait(), _GUARD_S)
    async with risk_store.pool.acquire() as connection, connection.transaction():
        is_lock_free = await connection.fetchval(
            "select pg_try_advisory_xact_lock(hashtext($1), hashtext($2))",
            risk_store.schema, "risk-a",
        )  # the lock another risk command on "a" queues for
        open_transactions = await connection.fetchval(
            "select count(*) from pg_stat_activity where datname = current_database()"
            " and state like 'idle in transaction%'"
        )
    resume.set()
    decision = await sending

    assert is_lock_free
    assert open_transactions == 0
    assert (decision.approved, decision.reason) == (False, RefusalReason.UNKNOWN_ACCOUNT)


async def test_the_decision_rests_on_the_view_as_of_when_it_was_found_current(
    nc: Client, risk_store: EventStore, token: str, ask: CommandClient,
    view_consumer: DurableConsumer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The consumer may fold an event between the batch's read of the view and NATS saying
    # the view is current: the view must be read after, or an unfreeze it has just handled
    # is not seen and the transfer is refused `account_frozen`.
    js = await unfrozen_a_moment_ago(nc, risk_store, token)
    has_handled_through = view_consumer.has_handled_through

    async def handled_as_nats_is_asked(stream_sequence: int) -> bool:
        async with consuming(nc, risk_store, token) as consumer:  # it runs meanwhile
            await wait_until(lambda: consumer_done(js, consumer))
        return await has_handled_through(stream_sequence)

    monkeypatch.setattr(view_consumer, "has_handled_through", handled_as_nats_is_asked)
    decision = await send(ask, token, assess(move(100)))

    assert (decision.approved, decision.reason) == (True, None)
