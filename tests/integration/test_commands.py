"""Commands over real NATS and PostgreSQL: applied once, refusals recorded, shared by instances."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import orjson
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from pydantic import BaseModel, ConfigDict

from eventstore import EventStore, NewEvent, StreamNotFound, UnitOfWork
from ledger.bus import connect
from ledger.commands import (
    Command,
    CommandClient,
    CommandFailed,
    CommandNotReady,
    CommandRefused,
    CommandService,
)
from ledger.context import (
    ACTOR_HEADER,
    CAUSATION_HEADER,
    CORRELATION_HEADER,
    TRACEPARENT_HEADER,
    bound,
    current,
    new_context,
)
from tests.integration.json_logs import json_lines

DEPOSIT_LIMIT_MINOR = 1_000


class Deposit(Command):
    account_id: str
    amount_minor: int


class Deposited(BaseModel):
    model_config = ConfigDict(frozen=True)

    account_id: str
    stream_version: int
    event_id: uuid.UUID


class DepositWithMemo(Deposit):
    memo: str


class DepositEndpoint:
    """A deposit handler that counts its runs and can be slow the first time."""

    def __init__(self, *, first_run_delay_s: float = 0.0) -> None:
        self.runs = 0
        self.first_run_delay_s = first_run_delay_s

    async def __call__(self, command: Deposit, unit: UnitOfWork) -> Deposited:
        self.runs += 1
        stream_id = f"account-{command.account_id}"
        # On the unit's own connection: a second pool connection per request would let
        # many concurrent requests take the whole pool and wait on each other forever.
        version = await unit.connection.fetchval(
            f"select coalesce(max(version), 0) from {unit.store.schema}.streams"
            " where stream_id = $1",
            stream_id,
        )
        event = NewEvent(
            "Deposited", {"amount_minor": command.amount_minor}, current().as_metadata()
        )
        result = await unit.append(stream_id, [event], version)
        if self.runs == 1:
            await asyncio.sleep(self.first_run_delay_s)  # holds the stream's lock meanwhile
        if command.amount_minor > DEPOSIT_LIMIT_MINOR:
            raise CommandRefused(
                "limit_exceeded", "a deposit is at most 10.00", {"limit_minor": DEPOSIT_LIMIT_MINOR}
            )
        return Deposited(
            account_id=command.account_id,
            stream_version=result.version,
            event_id=result.events[0].event_id,
        )


@pytest.fixture
def service_name() -> str:
    return f"bank-{secrets.token_hex(4)}"


@asynccontextmanager
async def serving(
    nc: Client, store: EventStore, name: str, endpoint: DepositEndpoint
) -> AsyncIterator[CommandService]:
    service = CommandService(nc, store, name=name, version="0.1.0")
    service.command("deposit", Deposit, Deposited)(endpoint)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


def deposit(amount_minor: int, account_id: str = "alice") -> Deposit:
    return Deposit(command_id=uuid.uuid4(), account_id=account_id, amount_minor=amount_minor)


async def event_count(store: EventStore, account_id: str = "alice") -> int:
    try:
        return len(await store.read_stream(f"account-{account_id}"))
    except StreamNotFound:
        return 0


async def recorded_count(store: EventStore) -> int:
    count = await store.pool.fetchval(f"select count(*) from {store.schema}.command_replies")
    return int(count)


async def test_a_repeated_command_id_is_applied_once_and_answered_the_same(
    nc: Client, store: EventStore, service_name: str
) -> None:
    endpoint = DepositEndpoint()
    client = CommandClient(nc, timeout_s=2.0, max_retries=0)
    command = deposit(500)
    async with serving(nc, store, service_name, endpoint):
        first = await client.send(f"{service_name}.deposit", command, Deposited)
        second = await client.send(f"{service_name}.deposit", command, Deposited)

    assert first == second
    assert endpoint.runs == 1
    assert await event_count(store) == 1


async def test_a_command_id_reused_on_another_endpoint_is_an_error_and_applies_nothing(
    nc: Client, store: EventStore, service_name: str
) -> None:
    deposits, refunds = DepositEndpoint(), DepositEndpoint()
    service = CommandService(nc, store, name=service_name, version="0.1.0")
    service.command("deposit", Deposit, Deposited)(deposits)
    service.command("refund", Deposit, Deposited)(refunds)
    client = CommandClient(nc, timeout_s=2.0, max_retries=0)
    command = deposit(500)
    await service.start()
    try:
        await client.send(f"{service_name}.deposit", command, Deposited)
        with pytest.raises(CommandFailed) as failed:
            await client.send(f"{service_name}.refund", command, Deposited)
    finally:
        await service.stop()

    assert failed.value.code == "400"
    assert f"command_id {command.command_id} was already used for {service_name}.deposit" in str(
        failed.value
    )
    assert (deposits.runs, refunds.runs) == (1, 0)
    assert await event_count(store) == 1
    assert await recorded_count(store) == 1


async def test_concurrent_duplicates_of_one_command_apply_once(
    nc: Client, store: EventStore, service_name: str
) -> None:
    client = CommandClient(nc, timeout_s=5.0, max_retries=0)
    command = deposit(500)
    async with serving(nc, store, service_name, DepositEndpoint()):
        replies = await asyncio.gather(
            *(client.send(f"{service_name}.deposit", command, Deposited) for _ in range(8))
        )

    assert len(set(replies)) == 1
    assert await event_count(store) == 1


async def test_commands_racing_on_one_stream_are_retried_until_each_applies(
    nc: Client, store: EventStore, service_name: str
) -> None:
    client = CommandClient(nc, timeout_s=5.0, max_retries=0)
    async with serving(nc, store, service_name, DepositEndpoint()):
        replies = await asyncio.gather(
            *(client.send(f"{service_name}.deposit", deposit(10), Deposited) for _ in range(5))
        )

    assert sorted(reply.stream_version for reply in replies) == [1, 2, 3, 4, 5]
    assert await event_count(store) == 5


async def test_a_refusal_is_recorded_answered_again_and_leaves_no_effect(
    nc: Client, store: EventStore, service_name: str
) -> None:
    endpoint = DepositEndpoint()
    client = CommandClient(nc, timeout_s=2.0, max_retries=0)
    command = deposit(DEPOSIT_LIMIT_MINOR + 1)
    async with serving(nc, store, service_name, endpoint):
        with pytest.raises(CommandRefused) as first:
            await client.send(f"{service_name}.deposit", command, Deposited)
        with pytest.raises(CommandRefused) as second:
            await client.send(f"{service_name}.deposit", command, Deposited)

    assert first.value.code == second.value.code == "limit_exceeded"
    assert first.value.message == second.value.message
    assert second.value.details == {"limit_minor": DEPOSIT_LIMIT_MINOR}
    assert endpoint.runs == 1
    assert await event_count(store) == 0
    assert await recorded_count(store) == 1


@pytest.mark.parametrize(
    "payload",
    [b"{not json", b"{}", orjson.dumps({"command_id": "not-a-uuid", "account_id": "alice"})],
)
async def test_a_malformed_request_gets_a_bad_request_error_and_stores_nothing(
    nc: Client, store: EventStore, service_name: str, payload: bytes
) -> None:
    async with serving(nc, store, service_name, DepositEndpoint()):
        answer = await nc.request(f"{service_name}.deposit", payload, timeout=2.0)

    envelope = orjson.loads(answer.data)
    assert envelope["status"] == "error"
    assert envelope["code"] == "400"
    assert answer.headers is not None
    assert answer.headers["Nats-Service-Error-Code"] == "400"
    assert await recorded_count(store) == 0
    assert await store.read_all() == []


async def test_a_command_the_endpoint_does_not_accept_fails_with_its_code(
    nc: Client, store: EventStore, service_name: str
) -> None:
    client = CommandClient(nc, timeout_s=2.0, max_retries=0)
    command = DepositWithMemo(
        command_id=uuid.uuid4(), account_id="alice", amount_minor=5, memo="extra field"
    )
    async with serving(nc, store, service_name, DepositEndpoint()):
        with pytest.raises(CommandFailed) as failed:
            await client.send(f"{service_name}.deposit", command, Deposited)

    assert failed.value.code == "400"
    assert "memo" in str(failed.value)
    assert await recorded_count(store) == 0


async def test_instances_of_one_service_share_the_load_and_answer_discovery(
    nc: Client, nats_url: str, store: EventStore, service_name: str
) -> None:
    other_nc = await connect([nats_url], "test-commands-other")
    endpoints = [DepositEndpoint(), DepositEndpoint()]
    # Retries are safe (the same command_id); they keep a loaded machine from failing the test.
    client = CommandClient(nc, timeout_s=10.0, max_retries=3)
    try:
        async with (
            serving(nc, store, service_name, endpoints[0]) as first,
            serving(other_nc, store, service_name, endpoints[1]) as second,
        ):
            await asyncio.gather(
                *(
                    client.send(f"{service_name}.deposit", deposit(1, f"a{n}"), Deposited)
                    for n in range(40)
                )
            )
            pinged_ids = await ping_ids(nc, service_name)
            expected_ids = {first.instance_id, second.instance_id}
    finally:
        await other_nc.close()

    # A retry racing a slow first attempt may run the handler twice; only one commits.
    assert endpoints[0].runs + endpoints[1].runs >= 40
    assert sum([await event_count(store, f"a{n}") for n in range(40)]) == 40
    assert endpoints[0].runs > 0
    assert endpoints[1].runs > 0
    assert pinged_ids == expected_ids


async def ping_ids(nc: Client, service_name: str, gather_s: float = 1.5) -> set[str]:
    inbox = nc.new_inbox()
    answers = await nc.subscribe(inbox)
    await nc.publish(f"$SRV.PING.{service_name}", b"", reply=inbox)
    ids: set[str] = set()
    try:
        async with asyncio.timeout(gather_s):
            async for message in answers.messages:
                ids.add(orjson.loads(message.data)["id"])
    except TimeoutError:
        pass
    await answers.unsubscribe()
    return ids


async def test_a_retry_after_a_timeout_is_answered_without_applying_twice(
    nc: Client, store: EventStore, service_name: str
) -> None:
    attempts: list[Msg] = []
    endpoint = DepositEndpoint(first_run_delay_s=0.8)
    client = CommandClient(nc, timeout_s=0.5, max_retries=3)

    async def record_attempt(message: Msg) -> None:
        attempts.append(message)

    monitor = await nc.subscribe(f"{service_name}.deposit", cb=record_attempt)
    command = deposit(500)
    async with serving(nc, store, service_name, endpoint):
        reply = await client.send(f"{service_name}.deposit", command, Deposited)
    await monitor.unsubscribe()  # stop() above waited for the slow first run to finish

    assert len(attempts) >= 2
    assert reply.stream_version == 1
    assert await event_count(store) == 1
    assert await recorded_count(store) == 1


async def test_the_senders_correlation_reaches_the_appended_events_metadata(
    nc: Client, store: EventStore, service_name: str
) -> None:
    client = CommandClient(nc, timeout_s=2.0, max_retries=0)
    command = deposit(500)
    sender = new_context(actor="teller-7")
    async with serving(nc, store, service_name, DepositEndpoint()):
        with bound(sender):
            await client.send(f"{service_name}.deposit", command, Deposited)

    [event] = await store.read_stream("account-alice")
    assert event.metadata["correlation_id"] == sender.correlation_id
    assert event.metadata["causation_id"] == str(command.command_id)
    assert event.metadata["actor"] == "teller-7"
    assert event.metadata["traceparent"].split("-")[1] == sender.trace_id


@pytest.mark.parametrize("amount_minor", [500, DEPOSIT_LIMIT_MINOR + 1], ids=["ok", "refused"])
async def test_a_reply_carries_the_senders_correlation_and_trace_caused_by_the_command(
    nc: Client, store: EventStore, service_name: str, amount_minor: int
) -> None:
    command = deposit(amount_minor)
    sender = new_context(actor="teller-7").caused_by("step-started-1")
    async with serving(nc, store, service_name, DepositEndpoint()):
        replies = [await nc.request(f"{service_name}.deposit", command.model_dump_json().encode(),
                                    timeout=2.0, headers=sender.as_headers())
                   for _ in range(2)]  # the second is the recorded reply, replayed

    for reply in replies:
        assert reply.headers is not None
        assert reply.headers[CORRELATION_HEADER] == sender.correlation_id
        assert reply.headers[CAUSATION_HEADER] == str(command.command_id)
        assert reply.headers[ACTOR_HEADER] == "teller-7"
        assert reply.headers[TRACEPARENT_HEADER].split("-")[1] == sender.trace_id
    if amount_minor <= DEPOSIT_LIMIT_MINOR:  # the reply comes from the span of the effect
        [event] = await store.read_stream("account-alice")
        assert (replies[0].headers or {})[TRACEPARENT_HEADER] == event.metadata["traceparent"]


async def test_a_bad_request_error_carries_the_senders_correlation_and_trace_and_no_cause(
    nc: Client, store: EventStore, service_name: str
) -> None:
    sender = new_context().caused_by("step-started-1")
    async with serving(nc, store, service_name, DepositEndpoint()):
        reply = await nc.request(f"{service_name}.deposit", b"{}", timeout=2.0,
                                 headers=sender.as_headers())  # fmt: skip

    assert reply.headers is not None
    assert reply.headers["Nats-Service-Error-Code"] == "400"
    assert reply.headers[CORRELATION_HEADER] == sender.correlation_id
    assert reply.headers[TRACEPARENT_HEADER].split("-")[1] == sender.trace_id
    assert CAUSATION_HEADER not in reply.headers


async def test_an_invalid_command_is_logged_with_its_senders_correlation_and_trace(
    nc: Client, store: EventStore, service_name: str
) -> None:
    sender = new_context(actor="teller-7")
    with json_lines("ledger.commands.answers") as lines:
        async with serving(nc, store, service_name, DepositEndpoint()):
            answer = await nc.request(f"{service_name}.deposit", b'{"amount_minor": "lots"}',
                                      timeout=2.0, headers=sender.as_headers())  # fmt: skip

    assert orjson.loads(answer.data)["code"] == "400"
    [warning] = [line for line in lines if line["level"] == "WARNING"]
    assert "invalid" in str(warning["message"])
    assert warning["correlation_id"] == sender.correlation_id
    assert warning["trace_id"] == sender.trace_id
    assert warning["actor"] == "teller-7"


async def test_an_unexpected_failure_is_an_error_reply_that_records_nothing(
    nc: Client, store: EventStore, service_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    service = CommandService(nc, store, name=service_name, version="0.1.0")

    @service.command("deposit", Deposit, Deposited)
    async def broken(command: Deposit, unit: UnitOfWork) -> Deposited:
        await unit.append("account-alice", [NewEvent("Deposited", {"amount_minor": 1})])
        raise RuntimeError("disk on fire")

    client = CommandClient(nc, timeout_s=2.0, max_retries=0)
    command = deposit(5)
    await service.start()
    try:
        with pytest.raises(CommandFailed) as failed, bound(
            replace(new_context(), correlation_id="the-request-that-began-it")
        ):
            await client.send(f"{service_name}.deposit", command, Deposited)
    finally:
        await service.stop()

    assert failed.value.code == "500"
    assert "disk on fire" not in str(failed.value)
    # The reply names the command to find the logs by, not the request that began it.
    assert str(command.command_id) in str(failed.value)
    assert "the-request-that-began-it" not in str(failed.value)
    assert "disk on fire" in caplog.text
    assert await event_count(store) == 0
    assert await recorded_count(store) == 0


async def test_a_command_not_ready_is_run_again_once_caught_up_with_no_transaction_open(
    nc: Client, store: EventStore, service_name: str
) -> None:
    service = CommandService(nc, store, name=service_name, version="0.1.0")
    caught_up: set[uuid.UUID] = set()
    transactions_open_while_catching_up: list[int] = []

    async def catch_up(command: Deposit) -> bool:
        transactions_open_while_catching_up.append(await store.pool.fetchval(
            "select count(*) from pg_stat_activity where datname = current_database()"
            " and state like 'idle in transaction%'"))  # fmt: skip
        if command.amount_minor > DEPOSIT_LIMIT_MINOR:
            return False  # still not ready
        caught_up.add(command.command_id)
        return True

    @service.command("deposit", Deposit, Deposited)
    async def waiting(command: Deposit, unit: UnitOfWork) -> Deposited:
        result = await unit.append(f"account-{command.account_id}",
                                   [NewEvent("Deposited", {"amount_minor": command.amount_minor})])
        if command.command_id not in caught_up:
            raise CommandNotReady("behind", catch_up=lambda: catch_up(command))
        return Deposited(account_id=command.account_id, stream_version=result.version,
                         event_id=result.events[0].event_id)  # fmt: skip

    client = CommandClient(nc, timeout_s=2.0, max_retries=0)
    await service.start()
    try:
        deposited = await client.send(f"{service_name}.deposit", deposit(5), Deposited)
        with pytest.raises(CommandFailed) as not_ready:
            await client.send(f"{service_name}.deposit", deposit(5_000, "bob"), Deposited)
    finally:
        await service.stop()

    assert deposited.stream_version == 1  # the run before the catch-up rolled back
    assert not_ready.value.code == "503"
    assert transactions_open_while_catching_up == [0, 0]
    assert (await event_count(store), await event_count(store, "bob")) == (1, 0)
    assert await recorded_count(store) == 1
