"""The sending side of commands: which NATS failures are retried, which end the send."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest
from nats.errors import ConnectionClosedError, OutboundBufferLimitError
from pydantic import BaseModel

from ledger.commands import Command, CommandClient, CommandFailed


class Ping(Command):
    pass


class Pong(BaseModel):
    answer: str


class FakeReply:
    def __init__(self, envelope: dict[str, Any]) -> None:
        self.data = orjson.dumps(envelope)
        self.headers: dict[str, str] = {}


class FakeNats:
    """Fails the first requests with the given errors, then answers."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.requests = 0

    async def request(self, subject: str, payload: bytes, **_: Any) -> FakeReply:
        self.requests += 1
        if self.errors:
            raise self.errors.pop(0)
        return FakeReply({"status": "ok", "reply": {"answer": "pong"}})


def ping() -> Ping:
    return Ping(command_id=uuid.uuid4())


async def test_a_full_outbound_buffer_while_reconnecting_is_retried() -> None:
    nc = FakeNats(OutboundBufferLimitError())
    client = CommandClient(nc, timeout_s=1.0, max_retries=2)  # type: ignore[arg-type]

    reply = await client.send("svc.ping", ping(), Pong)

    assert reply == Pong(answer="pong")
    assert nc.requests == 2


async def test_a_closed_connection_fails_the_command_at_once() -> None:
    nc = FakeNats(ConnectionClosedError())
    client = CommandClient(nc, timeout_s=1.0, max_retries=2)  # type: ignore[arg-type]

    with pytest.raises(CommandFailed, match=r"svc\.ping could not be sent") as failed:
        await client.send("svc.ping", ping(), Pong)

    assert failed.value.attempts == 1
    assert nc.requests == 1


async def test_retries_that_all_fail_end_in_command_failed() -> None:
    nc = FakeNats(*(OutboundBufferLimitError() for _ in range(3)))
    client = CommandClient(nc, timeout_s=1.0, max_retries=2)  # type: ignore[arg-type]

    with pytest.raises(CommandFailed, match="unanswered after 3 attempts"):
        await client.send("svc.ping", ping(), Pong)
