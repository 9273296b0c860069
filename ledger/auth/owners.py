"""Who owns which accounts, asked of the account service over NATS.

The owner rule needs, outside the account service (in the trade service, which checks that
a transfer leaves its token's owner's account), the owners of accounts; only the account
service knows them, and no service reads another's tables. So the account service answers
`<account schema>.owners` (`account.owners` unprefixed) with plain request/reply in a queue
group: a read, so nothing is recorded, unlike a command. An account it does not know is
absent from the answer, which callers treat like another owner's (no existence leak).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Annotated, Final

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ledger.settings import Settings

MAX_ACCOUNTS: Final = 16
"""Accounts one question may name (a trade names four)."""
MAX_IN_FLIGHT: Final = 64
"""Questions one instance answers at once; more wait in the subscription."""
_RETRY_PAUSE_S: Final = 0.05
_log = logging.getLogger(__name__)

OwnersLookup = Callable[[Sequence[str]], Awaitable[Mapping[str, str]]]
AccountId = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")]


class OwnersQuery(BaseModel):
    """Who owns these accounts?"""

    model_config = ConfigDict(frozen=True, extra="forbid")
    account_ids: tuple[AccountId, ...] = Field(min_length=1, max_length=MAX_ACCOUNTS)


class OwnersReply(BaseModel):
    """The owner of each account asked about that exists."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    owners: dict[str, str]


class OwnersUnavailable(Exception):
    """The account service did not say who owns the accounts (no answer, or an error)."""


def owners_subject(settings: Settings) -> str:
    """The subject the account service answers on, one per ledger (schema prefix)."""
    return f"{settings.schema_for('account')}.owners"


class OwnersServer:
    """Answers owner questions with `lookup`, a few at a time, in a queue group."""

    def __init__(self, nc: Client, subject: str, lookup: OwnersLookup) -> None:
        self._nc = nc
        self._subject = subject
        self._lookup = lookup
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        """Subscribe (queue group `<subject>`, so replicas share the questions)."""
        assert self._subscription is None, "started once"
        self._subscription = await self._nc.subscribe(
            self._subject, queue=self._subject, cb=self._receive
        )

    async def stop(self) -> None:
        """Unsubscribe and let the questions in progress finish."""
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _receive(self, msg: Msg) -> None:
        await self._slots.acquire()
        task = asyncio.create_task(self._answer(msg))
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _answer(self, msg: Msg) -> None:
        try:
            query = OwnersQuery.model_validate_json(msg.data)
            owners = await self._lookup(query.account_ids)
            reply = orjson.dumps({"owners": dict(owners)})
        except ValidationError as error:
            reply = orjson.dumps({"error": f"not an owners query: {error.error_count()} errors"})
        except Exception:  # the asker must hear back; the cause stays in our logs
            _log.exception("answering %s failed", self._subject)
            reply = orjson.dumps({"error": "the owners lookup failed"})
        try:
            await msg.respond(reply)
        except NatsError:
            _log.warning("could not answer on %s", self._subject, exc_info=True)


async def ask_owners(nc: Client, settings: Settings, account_ids: Sequence[str]) -> dict[str, str]:
    """The owners of those of `account_ids` that exist, from the account service.

    Unanswered questions are asked again (a read: harmless), up to `command_max_retries`
    times, each waiting `command_timeout_s`. Raises OwnersUnavailable.
    """
    assert 1 <= len(account_ids) <= MAX_ACCOUNTS, "callers name a few accounts"
    payload = OwnersQuery(account_ids=tuple(account_ids)).model_dump_json().encode()
    subject = owners_subject(settings)
    for attempt in range(settings.command_max_retries + 1):
        try:
            msg = await nc.request(subject, payload, timeout=settings.command_timeout_s)
        except NatsError as error:
            _log.warning("%s attempt %d unanswered: %r", subject, attempt + 1, error)
            await asyncio.sleep(_RETRY_PAUSE_S * (attempt + 1))
            continue
        try:
            return OwnersReply.model_validate_json(msg.data).owners
        except ValidationError:
            raise OwnersUnavailable(f"{subject} answered: {msg.data[:200]!r}") from None
    raise OwnersUnavailable(f"{subject} went unanswered")
