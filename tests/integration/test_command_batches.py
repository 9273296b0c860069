"""Batch endpoints over real NATS and PostgreSQL: the commands that queue up while a batch
is served are decided together in one transaction, and each still gets the answer it would
have had alone (applied once, refusals recorded without effect, failures not recorded)."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from pydantic import BaseModel, ConfigDict

from eventstore import EventStore, NewEvent, StreamNotFound, UnitOfWork
from ledger.commands import (
    Command,
    CommandClient,
    CommandFailed,
    CommandRefused,
    CommandService,
    Incoming,
)
from ledger.context import (
    CAUSATION_HEADER,
    CORRELATION_HEADER,
    TRACEPARENT_HEADER,
    RequestContext,
    bound,
    current,
    new_context,
)

LIMIT_MINOR = 1_000
BOOM_MINOR = 666
"""An amount the handler fails on as a programming error would (not a refusal)."""


class Deposit(Command):
    account_id: str
    amount_minor: int


class Deposited(BaseModel):
    model_config = ConfigDict(frozen=True)

    account_id: str
    stream_version: int


class BatchDeposits:
    """Appends one event per command; refuses over the limit; fails on BOOM_MINOR. The
    first batch waits for `gate`, so that the requests sent meanwhile queue up."""

    def __init__(self) -> None:
        self.batches: list[list[uuid.UUID]] = []
        self.gate = asyncio.Event()
        self.first_batch_started = asyncio.Event()

    async def __call__(
        self, batch: Sequence[Incoming[Deposit]], unit: UnitOfWork
    ) -> list[Deposited | CommandRefused]:
        self.batches.append([incoming.command.command_id for incoming in batch])
        if len(self.batches) == 1:
            self.first_batch_started.set()
            await self.gate.wait()
        results: list[Deposited | CommandRefused] = []
        for incoming in batch:
            command = incoming.command
            if command.amount_minor > LIMIT_MINOR:
                results.append(CommandRefused("limit_exceeded", "a deposit is at most 10.00"))
                continue
            if command.amount_minor == BOOM_MINOR:
                raise RuntimeError("disk on fire")
            with bound(incoming.context):
                event = NewEvent("Deposited", {"amount_minor": command.amount_minor},
                                 current().as_metadata())  # fmt: skip
            result = await unit.append(f"account-{command.account_id}", [event])
            results.append(Deposited(account_id=command.account_id,
                                     stream_version=result.version))  # fmt: skip
        return results

    def decided(self, command: Deposit) -> int:
        """How many batches held `command` (a rolled-back batch counts too)."""
        return sum(command.command_id in batch for batch in self.batches)


@pytest.fixture
def service_name() -> str:
    return f"batch-{secrets.token_hex(4)}"


@asynccontextmanager
async def serving(
    nc: Client, store: EventStore, name: str, endpoint: BatchDeposits
) -> AsyncIterator[CommandService]:
    service = CommandService(nc, store, name=name, version="0.1.0")
    service.batch_command("deposit", Deposit, Deposited)(endpoint)
    await service.start()
    try:
        yield service
    finally:
        endpoint.gate.set()
        await service.stop()


def deposit(amount_minor: int, account_id: str) -> Deposit:
    return Deposit(command_id=uuid.uuid4(), account_id=account_id, amount_minor=amount_minor)


async def send_queued(
    nc: Client, name: str, endpoint: BatchDeposits, commands: Sequence[Deposit]
) -> list[Deposited | BaseException]:
    """Send the first command, then the rest while the first batch holds, then open it."""
    client = CommandClient(nc, timeout_s=10.0, max_retries=0)

    async def send(command: Deposit) -> Deposited:
        with bound(new_context(actor=f"teller-{command.account_id}")):
            return await client.send(f"{name}.deposit", command, Deposited)

    first = asyncio.create_task(send(commands[0]))
    await endpoint.first_batch_started.wait()
    rest = [asyncio.create_task(send(command)) for command in commands[1:]]
    await asyncio.sleep(0.5)  # the requests reach the service's queue meanwhile
    endpoint.gate.set()
    return await asyncio.gather(first, *rest, return_exceptions=True)


async def stream_length(store: EventStore, account_id: str) -> int:
    try:
        return len(await store.read_stream(f"account-{account_id}"))
    except StreamNotFound:
        return 0


async def recorded(store: EventStore, command: Deposit) -> bool:
    found = await store.pool.fetchval(
        f"select count(*) from {store.schema}.command_replies where command_id = $1",
        command.command_id,
    )
    return bool(found)


async def test_commands_that_queue_up_are_decided_together_each_in_its_senders_context(
    nc: Client, store: EventStore, service_name: str
) -> None:
    endpoint = BatchDeposits()
    commands = [deposit(10 + n, f"a{n}") for n in range(12)]
    async with serving(nc, store, service_name, endpoint):
        replies = await send_queued(nc, service_name, endpoint, commands)

    assert replies == [Deposited(account_id=f"a{n}", stream_version=1) for n in range(12)]
    assert [len(batch) for batch in endpoint.batches] == [1, 11]
    for command in commands:
        [event] = await store.read_stream(f"account-{command.account_id}")
        assert event.metadata["actor"] == f"teller-{command.account_id}"
        assert event.metadata["causation_id"] == str(command.command_id)
        assert await recorded(store, command)


async def test_each_reply_of_a_batch_carries_its_senders_correlation_caused_by_its_command(
    nc: Client, store: EventStore, service_name: str
) -> None:
    endpoint = BatchDeposits()
    commands = [deposit(10, "b0"), deposit(LIMIT_MINOR + 1, "b1"), deposit(20, "b2")]
    senders = [new_context().caused_by(f"step-started-{n}") for n in range(len(commands))]

    async def send(command: Deposit, sender: RequestContext) -> Msg:
        return await nc.request(f"{service_name}.deposit", command.model_dump_json().encode(),
                                timeout=10.0, headers=sender.as_headers())  # fmt: skip

    async with serving(nc, store, service_name, endpoint):
        first = asyncio.create_task(send(commands[0], senders[0]))
        await endpoint.first_batch_started.wait()
        rest = [asyncio.create_task(send(command, sender))
                for command, sender in zip(commands[1:], senders[1:], strict=True)]  # fmt: skip
        await asyncio.sleep(0.5)  # the requests reach the service's queue meanwhile
        endpoint.gate.set()
        replies = await asyncio.gather(first, *rest)

    assert [len(batch) for batch in endpoint.batches] == [1, 2]
    for command, sender, reply in zip(commands, senders, replies, strict=True):
        assert reply.headers is not None
        assert reply.headers[CORRELATION_HEADER] == sender.correlation_id
        assert reply.headers[CAUSATION_HEADER] == str(command.command_id)
        assert reply.headers[TRACEPARENT_HEADER].split("-")[1] == sender.trace_id


async def test_a_refused_command_leaves_no_effect_while_its_batch_commits(
    nc: Client, store: EventStore, service_name: str
) -> None:
    endpoint = BatchDeposits()
    refused = deposit(LIMIT_MINOR + 1, "b1")
    commands = [deposit(5, "b0"), refused, deposit(7, "b2")]
    async with serving(nc, store, service_name, endpoint):
        replies = await send_queued(nc, service_name, endpoint, commands)
        client = CommandClient(nc, timeout_s=10.0, max_retries=0)
        with pytest.raises(CommandRefused) as again:
            await client.send(f"{service_name}.deposit", refused, Deposited)

    assert isinstance(replies[1], CommandRefused)
    assert replies[1].code == again.value.code == "limit_exceeded"
    assert replies[2] == Deposited(account_id="b2", stream_version=1)
    assert [await stream_length(store, a) for a in ("b0", "b1", "b2")] == [1, 0, 1]
    assert endpoint.decided(refused) == 1
    assert await recorded(store, refused)


async def test_a_batch_that_fails_is_served_again_one_command_at_a_time(
    nc: Client, store: EventStore, service_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint = BatchDeposits()
    broken = deposit(BOOM_MINOR, "c1")
    commands = [deposit(5, "c0"), deposit(6, "c2"), broken, deposit(8, "c3")]
    async with serving(nc, store, service_name, endpoint):
        replies = await send_queued(nc, service_name, endpoint, commands)

    assert isinstance(replies[2], CommandFailed)
    assert replies[2].code == "500"
    assert [replies[1], replies[3]] == [Deposited(account_id="c2", stream_version=1),
                                        Deposited(account_id="c3", stream_version=1)]
    assert [await stream_length(store, a) for a in ("c0", "c1", "c2", "c3")] == [1, 0, 1, 1]
    assert not await recorded(store, broken)
    assert "failed; served one by one" in caplog.text  # a failure only batches show is loud
    assert all([await recorded(store, command) for command in commands if command != broken])


async def test_a_command_sent_twice_is_decided_once_and_answered_the_same(
    nc: Client, store: EventStore, service_name: str
) -> None:
    endpoint = BatchDeposits()
    twice = deposit(9, "d1")
    commands = [deposit(5, "d0"), twice, deposit(6, "d2"), twice, twice]
    async with serving(nc, store, service_name, endpoint):
        replies = await send_queued(nc, service_name, endpoint, commands)
        client = CommandClient(nc, timeout_s=10.0, max_retries=0)
        later = await client.send(f"{service_name}.deposit", twice, Deposited)

    assert replies[1] == replies[3] == replies[4] == later
    assert await stream_length(store, "d1") == 1
    assert endpoint.decided(twice) == 1
