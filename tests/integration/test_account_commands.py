"""The account's saga commands over real NATS and PostgreSQL: reserve, post, void."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import pytest
from nats.aio.client import Client

from account_service import repository
from account_service.commands import register_commands, reserve_legs
from account_service.contracts import Leg, LegsDone, PostLegs, ReserveLegs, VoidLegs
from account_service.domain import AccountState, deposit, freeze, open_account
from account_service.holds import HoldsProjection
from account_service.projections import BalancesProjection, EntriesProjection
from eventstore import Append, ConcurrencyError, EventStore, Projection, rebuild
from ledger.commands import CommandClient, CommandRefused, CommandService
from ledger.context import bound, new_context
from ledger.money import Assets


@pytest.fixture
async def accounts(pool: asyncpg.Pool, schema: str) -> EventStore:
    """A store with the account service's inline projections (the repository reads them)."""
    projections = (BalancesProjection(), EntriesProjection(), HoldsProjection())
    created = EventStore(pool, schema, inline_projections=projections)
    await created.migrate()
    for projection in projections:
        await projection.ensure_table(created)
    return created


@pytest.fixture
async def service_name(nc: Client, accounts: EventStore) -> AsyncIterator[str]:
    """A running account command service under a name no other test uses."""
    name = f"account-{secrets.token_hex(4)}"
    service = CommandService(nc, accounts, name=name, version="0.1.0")
    register_commands(service, Assets())
    await service.start()
    yield name
    await service.stop()


class Saga:
    """Sends the account commands as the saga would."""

    def __init__(self, nc: Client, service_name: str) -> None:
        self.client = CommandClient(nc, timeout_s=10.0, max_retries=0)
        self.name = service_name

    async def reserve(self, transfer_id: str, *legs: Leg, command_id: uuid.UUID | None = None
                      ) -> LegsDone:
        command = ReserveLegs(command_id=command_id or uuid.uuid4(), transfer_id=transfer_id,
                              legs=legs)
        return await self.client.send(f"{self.name}.reserve", command, LegsDone)

    async def post(self, transfer_id: str, *legs: Leg) -> LegsDone:
        command = PostLegs(command_id=uuid.uuid4(), transfer_id=transfer_id, legs=legs)
        return await self.client.send(f"{self.name}.post", command, LegsDone)

    async def void(self, transfer_id: str, *legs: Leg) -> LegsDone:
        command = VoidLegs(command_id=uuid.uuid4(), transfer_id=transfer_id, legs=legs)
        return await self.client.send(f"{self.name}.void", command, LegsDone)


@pytest.fixture
def saga(nc: Client, service_name: str) -> Saga:
    return Saga(nc, service_name)


async def opened(store: EventStore, account_id: str, balance_minor: int = 0,
                 currency: str = "USD", overdraft_minor: int = 0) -> None:
    async with store.unit_of_work() as unit:
        events = open_account(None, account_id, "owner", currency, overdraft_minor)
        await repository.save(unit, None, account_id, events)
    if balance_minor:
        await deposited(store, account_id, balance_minor)


async def deposited(store: EventStore, account_id: str, amount_minor: int) -> None:
    """Deposit as the API would: optimistic, retried on a concurrent writer."""
    for _ in range(50):
        try:
            async with store.unit_of_work() as unit:
                await repository.decide_and_save(
                    unit, account_id, lambda state: deposit(state, amount_minor, "d", None)
                )
            return
        except ConcurrencyError:
            await asyncio.sleep(0.001)
    raise AssertionError("the deposit never got through")


async def state_of(store: EventStore, account_id: str) -> AccountState:
    async with store.pool.acquire() as connection:
        return await repository.require(store, connection, account_id)


async def event_types(store: EventStore, account_id: str) -> list[str]:
    return [e.event_type for e in await store.read_stream(f"account-{account_id}")]


def leg(from_account: str, to_account: str, amount_minor: int, leg_id: str = "l1",
        currency: str = "USD") -> Leg:
    return Leg(leg_id=leg_id, from_account=from_account, to_account=to_account,
               amount_minor=amount_minor, currency=currency)


async def holds_of(store: EventStore, transfer_id: str) -> dict[str, tuple[str, str]]:
    """Hold id -> (account id, status), from the holds read model."""
    rows = await store.pool.fetch(
        f"select hold_id, account_id, status from {store.schema}.holds where transfer_id = $1",
        transfer_id,
    )
    return {row["hold_id"]: (row["account_id"], row["status"]) for row in rows}


async def refusal_of(sending: Any) -> CommandRefused:
    with pytest.raises(CommandRefused) as refused:
        await sending
    return refused.value


# --- reserve ---------------------------------------------------------------------------


async def test_reserve_places_a_debit_hold_and_a_pending_credit(
    accounts: EventStore, saga: Saga
) -> None:
    await opened(accounts, "a", 100)
    await opened(accounts, "b")

    done = await saga.reserve("t1", leg("a", "b", 30))

    assert done.hold_ids == ("t1:l1:debit", "t1:l1:credit")
    payer, payee = await state_of(accounts, "a"), await state_of(accounts, "b")
    assert (payer.posted_minor, payer.pending_debits_minor, payer.available_minor) == (100, 30, 70)
    assert (payee.posted_minor, payee.pending_credits_minor) == (0, 30)


async def test_reserve_events_carry_the_senders_context(
    accounts: EventStore, saga: Saga
) -> None:
    await opened(accounts, "a", 100)
    await opened(accounts, "b")
    command_id = uuid.uuid4()

    with bound(new_context()) as context:
        await saga.reserve("t1", leg("a", "b", 30), command_id=command_id)

    for account_id in ("a", "b"):
        hold_placed = (await accounts.read_stream(f"account-{account_id}"))[-1]
        assert hold_placed.metadata["correlation_id"] == context.correlation_id
        assert hold_placed.metadata["causation_id"] == str(command_id)


async def test_a_repeated_reserve_is_applied_once(accounts: EventStore, saga: Saga) -> None:
    await opened(accounts, "a", 100)
    await opened(accounts, "b")
    command_id = uuid.uuid4()

    first = await saga.reserve("t1", leg("a", "b", 30), command_id=command_id)
    again = await saga.reserve("t1", leg("a", "b", 30), command_id=command_id)
    retried = await saga.reserve("t1", leg("a", "b", 30))  # a new id: the holds are open

    assert first == again == retried
    assert await event_types(accounts, "a") == ["AccountOpened", "Deposited", "HoldPlaced"]
    assert (await state_of(accounts, "a")).available_minor == 70


async def test_reserve_refused_on_one_leg_leaves_no_hold_on_any(
    accounts: EventStore, saga: Saga
) -> None:
    await opened(accounts, "a", 100)
    await opened(accounts, "b")
    await opened(accounts, "c", 10)
    command_id = uuid.uuid4()
    legs = (leg("a", "b", 50, "cash"), leg("c", "a", 11, "asset"))

    refused = await refusal_of(saga.reserve("t1", *legs, command_id=command_id))
    again = await refusal_of(saga.reserve("t1", *legs, command_id=command_id))

    assert refused.code == again.code == "insufficient_funds"
    assert refused.details == {"account_id": "c", "leg_id": "asset", "needed_minor": 11,
                               "available_minor": 10}
    # The message reaches the transfer's detail, which the payee reads: no balance in it.
    assert refused.message == (
        "account c has less available (overdraft included) than the 11 minor units needed"
    )
    for account_id in ("a", "b", "c"):
        assert "HoldPlaced" not in await event_types(accounts, account_id)


@pytest.mark.parametrize(
    ("arrange", "the_leg", "code"),
    [
        ("frozen", leg("a", "b", 1), "account_frozen"),
        ("frozen_payee", leg("b", "a", 1), "account_frozen"),
        ("none", leg("a", "nobody", 1), "unknown_account"),
        ("none", leg("a", "b", 1, currency="EUR"), "currency_mismatch"),
        ("none", leg("a", "b", 1, currency="XYZ"), "unknown_currency"),
        ("none", leg("a", "a", 1), "same_account"),
        ("none", leg("a", "b", 101), "insufficient_funds"),
    ],
)
async def test_reserve_refusals_are_typed(
    accounts: EventStore, saga: Saga, arrange: str, the_leg: Leg, code: str
) -> None:
    await opened(accounts, "a", 100)
    await opened(accounts, "b", 100)
    if arrange.startswith("frozen"):
        async with accounts.unit_of_work() as unit:
            await repository.decide_and_save(unit, "a", lambda state: freeze(state, None))

    refused = await refusal_of(saga.reserve("t1", the_leg))

    assert refused.code == code


async def test_duplicate_leg_ids_are_refused(accounts: EventStore, saga: Saga) -> None:
    await opened(accounts, "a", 100)
    await opened(accounts, "b")

    refused = await refusal_of(saga.reserve("t1", leg("a", "b", 1), leg("a", "b", 2)))

    assert refused.code == "duplicate_leg"


async def test_an_account_in_several_legs_is_decided_against_its_evolving_state(
    accounts: EventStore, saga: Saga
) -> None:
    await opened(accounts, "a", 100)
    await opened(accounts, "b")
    await opened(accounts, "c")

    refused = await refusal_of(
        saga.reserve("t1", leg("a", "b", 60, "l1"), leg("a", "c", 60, "l2"))
    )
    await saga.reserve("t2", leg("a", "b", 60, "l1"), leg("a", "c", 40, "l2"))

    assert refused.code == "insufficient_funds"
    payer = await state_of(accounts, "a")
    assert (payer.available_minor, len(payer.open_holds)) == (0, 2)


async def test_an_account_in_several_legs_is_appended_once(accounts: EventStore) -> None:
    await opened(accounts, "a", 100)
    await opened(accounts, "b", 100)
    command = ReserveLegs(command_id=uuid.uuid4(), transfer_id="dvp",
                          legs=(leg("a", "b", 60, "cash"), leg("b", "a", 5, "asset")))
    appends: list[str] = []

    async with accounts.unit_of_work() as unit:
        append_many = unit.append_many

        async def counted(many: Sequence[Append]) -> Any:
            appends.extend(append.stream_id for append in many)
            return await append_many(many)

        unit.append_many = counted  # type: ignore[method-assign,assignment]
        await reserve_legs(command, unit, Assets())

    assert sorted(appends) == ["account-a", "account-b"]
    assert await event_types(accounts, "a") == [
        "AccountOpened", "Deposited", "HoldPlaced", "HoldPlaced"]


# --- post ------------------------------------------------------------------------------


async def test_post_moves_exactly_the_amount_and_may_be_repeated(
    accounts: EventStore, saga: Saga
) -> None:
    await opened(accounts, "a", 100)
    await opened(accounts, "b")
    await saga.reserve("t1", leg("a", "b", 30))

    done = await saga.post("t1", leg("a", "b", 30))
    again = await saga.post("t1", leg("a", "b", 30))  # a new command id: already posted

    assert done == again
    assert done.hold_ids == ("t1:l1:debit", "t1:l1:credit")
    payer, payee = await state_of(accounts, "a"), await state_of(accounts, "b")
    assert (payer.posted_minor, payer.pending_debits_minor, payer.available_minor) == (70, 0, 70)
    assert (payee.posted_minor, payee.pending_credits_minor, payee.available_minor) == (30, 0, 30)
    assert (await event_types(accounts, "a")).count("HoldPosted") == 1


async def test_post_records_an_entry_out_of_the_payer_and_into_the_payee(
    accounts: EventStore, saga: Saga
) -> None:
    await opened(accounts, "a", 100)
    await opened(accounts, "b", 5)
    await saga.reserve("t1", leg("a", "b", 30))

    await saga.post("t1", leg("a", "b", 30))
    await saga.post("t1", leg("a", "b", 30))  # a retry: no entry more

    rows = await accounts.pool.fetch(
        f"select account_id, entry_id, kind, amount_minor, balance_after_minor, transfer_id"
        f" from {accounts.schema}.entries order by global_position"
    )
    assert [tuple(row) for row in rows] == [
        ("a", "d", "deposit", 100, 100, None),
        ("b", "d", "deposit", 5, 5, None),
        ("a", "t1:l1:debit", "transfer", -30, 70, "t1"),
        ("b", "t1:l1:credit", "transfer", 30, 35, "t1"),
    ]
    for account_id in ("a", "b"):
        state = await state_of(accounts, account_id)
        assert state.posted_minor == sum(r["amount_minor"] for r in rows
                                         if r["account_id"] == account_id)  # fmt: skip


async def test_post_works_on_a_frozen_account(accounts: EventStore, saga: Saga) -> None:
    await opened(accounts, "a", 100)
    await opened(accounts, "b")
    await saga.reserve("t1", leg("a", "b", 30))
    async with accounts.unit_of_work() as unit:
        await repository.decide_and_save(unit, "a", lambda state: freeze(state, None))

    await saga.post("t1", leg("a", "b", 30))

    assert (await state_of(accounts, "a")).posted_minor == 70


async def test_post_of_a_voided_or_missing_hold_is_refused(
    accounts: EventStore, saga: Saga
) -> None:
    await opened(accounts, "a", 100)
    await opened(accounts, "b")
    await saga.reserve("t1", leg("a", "b", 30))
    await saga.void("t1", leg("a", "b", 30))

    voided = await refusal_of(saga.post("t1", leg("a", "b", 30)))
    missing = await refusal_of(saga.post("t2", leg("a", "b", 30)))

    assert voided.code == "hold_voided"
    assert missing.code == "hold_not_found"
    assert (await state_of(accounts, "a")).posted_minor == 100


async def test_post_refused_on_one_leg_posts_no_leg(accounts: EventStore, saga: Saga) -> None:
    await opened(accounts, "a", 100)
    await opened(accounts, "b", 100)
    await saga.reserve("t1", leg("a", "b", 30, "cash"))

    refused = await refusal_of(saga.post("t1", leg("a", "b", 30, "cash"),
                                         leg("b", "a", 5, "asset")))

    assert refused.code == "hold_not_found"
    assert (await state_of(accounts, "a")).pending_debits_minor == 30


async def test_post_with_another_amount_than_the_hold_is_refused(
    accounts: EventStore, saga: Saga
) -> None:
    await opened(accounts, "a", 100)
    await opened(accounts, "b")
    await saga.reserve("t1", leg("a", "b", 30))

    refused = await refusal_of(saga.post("t1", leg("a", "b", 31)))

    assert refused.code == "hold_conflict"


# --- void ------------------------------------------------------------------------------


async def test_void_releases_the_holds_and_may_be_repeated(
    accounts: EventStore, saga: Saga
) -> None:
    await opened(accounts, "a", 100)
    await opened(accounts, "b")
    await saga.reserve("t1", leg("a", "b", 30))

    done = await saga.void("t1", leg("a", "b", 30))
    again = await saga.void("t1", leg("a", "b", 30))

    assert done.hold_ids == ("t1:l1:debit", "t1:l1:credit")
    assert again.hold_ids == ()
    payer, payee = await state_of(accounts, "a"), await state_of(accounts, "b")
    assert (payer.posted_minor, payer.available_minor, payer.pending_debits_minor) == (100, 100, 0)
    assert (payee.posted_minor, payee.pending_credits_minor) == (0, 0)


async def test_void_releases_the_holds_of_every_leg_of_a_trade(
    accounts: EventStore, saga: Saga
) -> None:
    await opened(accounts, "buyer-cash", 100)
    await opened(accounts, "seller-cash")
    await opened(accounts, "seller-asset", 10, currency="BTC")
    await opened(accounts, "buyer-asset", currency="BTC")
    legs = (leg("buyer-cash", "seller-cash", 60, "cash"),
            leg("seller-asset", "buyer-asset", 4, "asset", currency="BTC"))  # fmt: skip
    await saga.reserve("t1", *legs)

    done = await saga.void("t1", *legs)

    assert done.hold_ids == ("t1:cash:debit", "t1:cash:credit", "t1:asset:debit",
                             "t1:asset:credit")  # fmt: skip
    assert set((await holds_of(accounts, "t1")).values()) == {
        ("buyer-cash", "voided"), ("seller-cash", "voided"),
        ("seller-asset", "voided"), ("buyer-asset", "voided"),
    }  # fmt: skip
    for account_id, posted_minor in (("buyer-cash", 100), ("seller-cash", 0),
                                     ("seller-asset", 10), ("buyer-asset", 0)):  # fmt: skip
        state = await state_of(accounts, account_id)
        assert (state.posted_minor, state.available_minor) == (posted_minor, posted_minor)
        assert (state.pending_debits_minor, state.pending_credits_minor) == (0, 0)
        assert state.open_holds == {}, account_id


async def test_void_after_a_failed_reserve_is_fine(accounts: EventStore, saga: Saga) -> None:
    await opened(accounts, "a", 10)
    await opened(accounts, "b")
    await refusal_of(saga.reserve("t1", leg("a", "b", 30)))
    await refusal_of(saga.reserve("t2", leg("a", "nobody", 1)))

    assert (await saga.void("t1", leg("a", "b", 30))).hold_ids == ()
    assert (await saga.void("t2", leg("a", "nobody", 1))).hold_ids == ()


async def test_void_after_post_is_refused(accounts: EventStore, saga: Saga) -> None:
    await opened(accounts, "a", 100)
    await opened(accounts, "b")
    await saga.reserve("t1", leg("a", "b", 30))
    await saga.post("t1", leg("a", "b", 30))

    refused = await refusal_of(saga.void("t1", leg("a", "b", 30)))

    assert refused.code == "hold_posted"
    assert (await state_of(accounts, "b")).posted_minor == 30


# --- concurrency -----------------------------------------------------------------------


async def test_concurrent_deposits_and_reserves_on_one_account_lose_no_update(
    accounts: EventStore, saga: Saga
) -> None:
    await opened(accounts, "hot", 1_000)
    payees = [f"payee-{i}" for i in range(20)]
    for payee in payees:
        await opened(accounts, payee)

    async with asyncio.TaskGroup() as group:
        for i, payee in enumerate(payees):
            group.create_task(saga.reserve(f"t{i}", leg("hot", payee, 10 + i)))
            group.create_task(deposited(accounts, "hot", 1 + i))

    hot = await state_of(accounts, "hot")
    assert hot.posted_minor == 1_000 + sum(1 + i for i in range(20))
    assert hot.pending_debits_minor == sum(10 + i for i in range(20))
    assert len(hot.open_holds) == 20
    assert hot.version == 2 + 20 + 20

    async with asyncio.TaskGroup() as group:
        for i, payee in enumerate(payees):
            group.create_task(saga.post(f"t{i}", leg("hot", payee, 10 + i)))
            group.create_task(deposited(accounts, "hot", 1))

    hot = await state_of(accounts, "hot")
    deposits_minor = sum(1 + i for i in range(20)) + 20
    assert hot.posted_minor == 1_000 + deposits_minor - sum(10 + i for i in range(20))
    assert (hot.pending_debits_minor, len(hot.open_holds)) == (0, 0)


# --- a hold is placed once and ends once -----------------------------------------------


async def test_reserve_again_after_post_is_refused_and_money_moves_once(
    accounts: EventStore, saga: Saga
) -> None:
    await opened(accounts, "a", 100)
    await opened(accounts, "b")
    await saga.reserve("t1", leg("a", "b", 30))
    await saga.post("t1", leg("a", "b", 30))

    refused = await refusal_of(saga.reserve("t1", leg("a", "b", 30)))  # a new command id
    reposted = await saga.post("t1", leg("a", "b", 30))

    assert refused.code == "hold_ended"
    assert refused.details == {"account_id": "a", "leg_id": "l1", "hold_id": "t1:l1:debit"}
    assert reposted.hold_ids == ("t1:l1:debit", "t1:l1:credit")
    payer, payee = await state_of(accounts, "a"), await state_of(accounts, "b")
    assert (payer.posted_minor, payer.pending_debits_minor, len(payer.open_holds)) == (70, 0, 0)
    assert (payee.posted_minor, payee.pending_credits_minor, len(payee.open_holds)) == (30, 0, 0)
    for account_id in ("a", "b"):
        types = await event_types(accounts, account_id)
        assert (types.count("HoldPlaced"), types.count("HoldPosted")) == (1, 1)


async def test_reserve_again_after_void_is_refused(accounts: EventStore, saga: Saga) -> None:
    await opened(accounts, "a", 100)
    await opened(accounts, "b")
    await saga.reserve("t1", leg("a", "b", 30))
    await saga.void("t1", leg("a", "b", 30))

    refused = await refusal_of(saga.reserve("t1", leg("a", "b", 30)))

    assert refused.code == "hold_ended"
    assert (await state_of(accounts, "a")).available_minor == 100


async def test_a_reserve_arriving_after_its_void_is_refused(
    accounts: EventStore, saga: Saga
) -> None:
    """The saga's reserve timed out, it compensated with void, then the reserve arrived."""
    await opened(accounts, "a", 100)
    await opened(accounts, "b", 5)

    voided = await saga.void("t1", leg("a", "b", 30))
    late = await refusal_of(saga.reserve("t1", leg("a", "b", 30)))
    post = await refusal_of(saga.post("t1", leg("a", "b", 30)))
    again = await saga.void("t1", leg("a", "b", 30))

    assert voided.hold_ids == again.hold_ids == ()
    assert late.code == "hold_ended"
    assert post.code == "hold_voided"
    payer, payee = await state_of(accounts, "a"), await state_of(accounts, "b")
    assert (payer.posted_minor, payer.available_minor, len(payer.open_holds)) == (100, 100, 0)
    assert (payee.posted_minor, payee.pending_credits_minor, len(payee.open_holds)) == (5, 0, 0)
    assert await event_types(accounts, "a") == ["AccountOpened", "Deposited", "HoldCancelled"]
    assert await holds_of(accounts, "t1") == {
        "t1:l1:debit": ("a", "cancelled"), "t1:l1:credit": ("b", "cancelled")}


async def test_void_on_an_unknown_account_cancels_only_on_the_known_one(
    accounts: EventStore, saga: Saga
) -> None:
    await opened(accounts, "a", 100)

    done = await saga.void("t1", leg("a", "nobody", 30))

    assert done.hold_ids == ()
    assert await accounts.stream_version("account-nobody") == 0
    assert await holds_of(accounts, "t1") == {"t1:l1:debit": ("a", "cancelled")}


async def test_a_hold_id_on_another_account_than_the_legs_is_refused(
    accounts: EventStore, saga: Saga
) -> None:
    await opened(accounts, "a", 100)
    await opened(accounts, "b")
    await opened(accounts, "c", 100)
    await saga.reserve("t1", leg("a", "b", 30))

    reserve = await refusal_of(saga.reserve("t1", leg("c", "b", 30)))
    void = await refusal_of(saga.void("t1", leg("c", "b", 30)))

    assert reserve.code == void.code == "hold_conflict"
    assert reserve.details["hold_id"] == "t1:l1:debit"
    assert (await state_of(accounts, "a")).pending_debits_minor == 30
    assert await event_types(accounts, "c") == ["AccountOpened", "Deposited"]


async def test_the_holds_table_follows_every_hold_and_equals_its_rebuild(
    accounts: EventStore, saga: Saga
) -> None:
    await opened(accounts, "a", 100)
    await opened(accounts, "b", 100)
    await saga.reserve("posted", leg("a", "b", 10))
    await saga.post("posted", leg("a", "b", 10))
    await saga.reserve("voided", leg("b", "a", 20))
    await saga.void("voided", leg("b", "a", 20))
    await saga.reserve("open", leg("a", "b", 30, "cash"), leg("b", "a", 1, "asset"))
    await saga.void("cancelled", leg("a", "b", 40))

    assert await holds_of(accounts, "posted") == {
        "posted:l1:debit": ("a", "posted"), "posted:l1:credit": ("b", "posted")}
    assert await holds_of(accounts, "voided") == {
        "voided:l1:debit": ("b", "voided"), "voided:l1:credit": ("a", "voided")}
    assert set((await holds_of(accounts, "open")).values()) == {("a", "open"), ("b", "open")}
    assert set((await holds_of(accounts, "cancelled")).values()) == {
        ("a", "cancelled"), ("b", "cancelled")}
    holds: Projection = next(
        p for p in accounts.inline_projections if isinstance(p, HoldsProjection))
    report = await rebuild(accounts, holds, verify=True)
    assert report.events > 0
    assert report.differences == []


async def test_every_account_read_model_equals_its_rebuild_and_survives_a_swap(
    accounts: EventStore, saga: Saga
) -> None:
    await opened(accounts, "a", 100)
    await opened(accounts, "b", 100)
    await saga.reserve("t1", leg("a", "b", 10))
    await saga.post("t1", leg("a", "b", 10))
    await saga.reserve("t2", leg("b", "a", 20))
    await saga.void("t2", leg("b", "a", 20))

    for projection in accounts.inline_projections:
        verified = await rebuild(accounts, projection, verify=True)
        swapped = await rebuild(accounts, projection)
        again = await rebuild(accounts, projection, verify=True)

        assert verified.differences == [], projection.name
        assert swapped.swapped
        assert again.differences == [], projection.name
    assert (await state_of(accounts, "a")).posted_minor == 90
    assert (await state_of(accounts, "b")).posted_minor == 110
