"""The language of commands on the wire: the base model, the reply envelope, the errors."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, Literal, TypeAlias, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from eventstore import UnitOfWork
from ledger.context import RequestContext, bound, current

MAX_ERROR_CHARS: Final = 500

Outcome: TypeAlias = Literal["ok", "refused", "error", "replayed"]
Envelope: TypeAlias = dict[str, Any]


class Command(BaseModel):
    """Base of every command: immutable, strict, and identified for idempotency."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    command_id: uuid.UUID


CommandT = TypeVar("CommandT", bound=Command)
ReplyT = TypeVar("ReplyT", bound=BaseModel)
CommandHandler: TypeAlias = Callable[[CommandT, UnitOfWork], Awaitable[ReplyT]]


@dataclass(frozen=True, slots=True)
class Incoming(Generic[CommandT]):
    """A command of a batch, with the context its sender sent it in (its events carry it)."""

    command: CommandT
    context: RequestContext


BatchHandler: TypeAlias = Callable[
    [Sequence[Incoming[CommandT]], UnitOfWork], Awaitable[Sequence["ReplyT | CommandRefused"]]
]
"""Decides a batch of commands in one unit of work: a reply or a refusal for each, in order.
A refused command must leave no effect in the unit; any exception fails the whole batch."""


class CommandRefused(Exception):
    """The participant declined the command (a result, recorded like a reply, not a crash)."""

    def __init__(self, code: str, message: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = dict(details or {})


class CommandNotReady(Exception):
    """The participant cannot decide yet (its view is catching up): nothing is recorded, the
    sender gets an error reply ("503") and retries the same command later.

    `catch_up`, when given, finds out whether the command is ready now, by I/O that must
    not run inside the command's transaction (asking NATS, say): the service awaits it once
    the transaction has rolled back, and when it answers True runs the command once more
    at once, in a new transaction."""

    def __init__(
        self, message: str, *, catch_up: Callable[[], Awaitable[bool]] | None = None
    ) -> None:
        super().__init__(message)
        self.catch_up = catch_up


class CommandFailed(Exception):
    """The command got no usable answer: an error reply, a bad reply, or retries ran out."""

    def __init__(self, message: str, *, subject: str, attempts: int, code: str | None = None):
        super().__init__(message)
        self.subject = subject
        self.attempts = attempts
        self.code = code


def decide_each(
    batch: Sequence[Incoming[CommandT]], decide: Callable[[CommandT], ReplyT]
) -> list[ReplyT | CommandRefused]:
    """`decide` each command in its sender's context; a refusal is its command's result."""
    results: list[ReplyT | CommandRefused] = []
    for incoming in batch:
        with bound(incoming.context):
            try:
                results.append(decide(incoming.command))
            except CommandRefused as refusal:
                results.append(refusal)
    return results


def one_at_a_time(handler: BatchHandler[CommandT, ReplyT]) -> CommandHandler[CommandT, ReplyT]:
    """The one-command handler of a batch handler: its reply, or its refusal raised. The
    command is decided in the context bound when it is called."""

    async def handle(command: CommandT, unit: UnitOfWork) -> ReplyT:
        (result,) = await handler([Incoming(command, current())], unit)
        if isinstance(result, CommandRefused):
            raise result
        return result

    return handle


def refusal_envelope(refusal: CommandRefused) -> Envelope:
    """The envelope of a refusal."""
    return {
        "status": "refused", "code": refusal.code,
        "message": refusal.message, "details": refusal.details,
    }


def error_envelope(code: str, message: str) -> Envelope:
    """The envelope of an error (micro's codes: "400" bad request, "500" failure)."""
    return {"status": "error", "code": code, "message": message}


def describe_invalid(subject: str, error: ValidationError) -> str:
    """What was wrong with a request, field by field, in bounded length."""
    problems = "; ".join(
        f"{'.'.join(str(part) for part in problem['loc']) or 'body'}: {problem['msg']}"
        for problem in error.errors(include_url=False)
    )
    return f"invalid {subject} request: {problems}"[:MAX_ERROR_CHARS]
