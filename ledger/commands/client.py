"""The sending side of commands: one request, retried under the same command id."""

from __future__ import annotations

import asyncio
import random
from typing import Final

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import (
    ConnectionReconnectingError,
    NoRespondersError,
    OutboundBufferLimitError,
    SlowConsumerError,
    StaleConnectionError,
)
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.micro.request import ERROR_HEADER
from pydantic import ValidationError

from ledger.commands.envelope import Command, CommandFailed, CommandRefused, ReplyT
from ledger.context import current
from ledger.settings import Settings

_BACKOFF_BASE_S: Final = 0.1
_BACKOFF_MAX_S: Final = 2.0
_WORTH_RETRYING: Final = (
    NatsTimeoutError,  # no answer in time (a flush timeout too)
    NoRespondersError,  # no instance subscribed: one may be starting
    ConnectionReconnectingError,
    OutboundBufferLimitError,  # the buffer filled while reconnecting
    StaleConnectionError,
    SlowConsumerError,
)
"""Failures a later attempt, under the same command id, may not meet."""


class CommandClient:
    """Sends commands and waits for their replies, retrying unanswered attempts."""

    def __init__(self, nc: Client, timeout_s: float, max_retries: int) -> None:
        assert timeout_s > 0, "an attempt needs time to be answered"
        assert max_retries >= 0, "retries cannot be negative"
        self._nc = nc
        self._timeout_s = timeout_s
        self._max_retries = max_retries

    @classmethod
    def from_settings(cls, nc: Client, settings: Settings) -> CommandClient:
        """A client with the configured per-attempt timeout and retries."""
        return cls(nc, settings.command_timeout_s, settings.command_max_retries)

    async def send(self, subject: str, command: Command, reply_model: type[ReplyT]) -> ReplyT:
        """Send `command` in the current context and return its reply.

        Timeouts, "no responders" and a reconnecting connection are retried with backoff
        under the same command id, so a retry never applies the command twice. Raises
        CommandRefused when the participant declines; CommandFailed on an error reply, when
        every attempt went unanswered, or when NATS cannot send it at all (closed, draining).
        """
        payload = command.model_dump_json().encode()
        headers = current().as_headers()
        attempts = self._max_retries + 1
        unanswered: Exception | None = None
        for attempt in range(1, attempts + 1):
            try:
                message = await self._nc.request(
                    subject, payload, timeout=self._timeout_s, headers=headers
                )
            except _WORTH_RETRYING as error:
                unanswered = error
                if attempt < attempts:
                    await asyncio.sleep(_backoff_s(attempt))
                continue
            except NatsError as error:
                raise CommandFailed(
                    f"{subject} could not be sent: {error!r}", subject=subject, attempts=attempt
                ) from error
            return _reply_from(subject, message, reply_model, attempt)
        raise CommandFailed(
            f"{subject} went unanswered after {attempts} attempts: {unanswered}",
            subject=subject, attempts=attempts,
        )


def _reply_from(subject: str, message: Msg, reply_model: type[ReplyT], attempt: int) -> ReplyT:
    """The reply in an envelope; raises CommandRefused or CommandFailed for the others."""
    try:
        envelope = orjson.loads(message.data)
    except orjson.JSONDecodeError:
        envelope = None
    if not isinstance(envelope, dict):
        error = (message.headers or {}).get(ERROR_HEADER, "a reply that is not an envelope")
        raise CommandFailed(f"{subject} answered {error}", subject=subject, attempts=attempt)
    status = envelope.get("status")
    if status == "ok":
        try:
            return reply_model.model_validate(envelope.get("reply"))
        except ValidationError as invalid:
            message_text = f"{subject} answered a reply that is not a {reply_model.__name__}"
            raise CommandFailed(message_text, subject=subject, attempts=attempt) from invalid
    if status == "refused":
        raise CommandRefused(
            str(envelope.get("code")), str(envelope.get("message")), envelope.get("details")
        )
    code = str(envelope.get("code", "")) or None
    raise CommandFailed(
        f"{subject} failed ({code}): {envelope.get('message')}",
        subject=subject, attempts=attempt, code=code,
    )


def _backoff_s(attempt: int) -> float:
    """Exponential, capped, with half of it jittered so retrying senders spread out."""
    ceiling_s = min(_BACKOFF_MAX_S, _BACKOFF_BASE_S * 2.0 ** (attempt - 1))
    return ceiling_s / 2 + random.uniform(0, ceiling_s / 2)

