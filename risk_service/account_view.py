"""Risk's own view of the accounts, kept from the account service's events over JetStream.

Risk never reads the account schema: a durable consumer of the account lifecycle events
(`AccountOpened`, `AccountFrozen`, `AccountUnfrozen`, `AccountClosed`) keeps the table
`<schema>.risk_accounts` of each account's currency and status. A row changes only when an
event is newer (by stream version) than the one it reflects, so a redelivered or late event
changes nothing; the consumer's inbox makes each message apply once besides. The
consumer's lag is the `ledger_consumer_lag_messages{consumer="risk-accounts"}` gauge.

    await ensure_table(store)
    consumer = account_consumer(nc, store, ConsumerOptions.from_settings(settings))
    views = await account_views(connection, store.schema, ["a-1", "a-2"])
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from nats.aio.client import Client

from eventstore import EventStore
from eventstore._db import Connection, Executor
from ledger.bus import EVENTS_SUBJECT_PREFIX
from ledger.consumers import ConsumedEvent, ConsumerHandler, ConsumerOptions, DurableConsumer
from risk_service.domain import AccountView

TABLE: Final = "risk_accounts"
DURABLE_NAME: Final = "risk-accounts"
ACCOUNT_STREAM_PREFIX: Final = "account-"
ACCOUNT_EVENTS_PREFIX: Final = f"{EVENTS_SUBJECT_PREFIX}.account.account"
"""`ledger.account.account`: where the relay publishes the account service's account events."""

STATUS_AFTER: Final = {
    "AccountOpened": "open",
    "AccountFrozen": "frozen",
    "AccountUnfrozen": "open",
    "AccountClosed": "closed",
}
"""The status an account has after each lifecycle event; other account events are ignored."""

_COLUMNS: Final = "account_id, currency, status, version, updated_at"
MAX_WAITING_COMMANDS: Final = 10_000
"""Commands whose view target `ViewProgress` remembers at once (the oldest is forgotten)."""


async def ensure_table(store: EventStore) -> None:
    """Create `<schema>.risk_accounts` if it does not exist; safe from many processes at once."""
    async with store.pool.acquire() as connection, connection.transaction():
        await connection.execute(
            "select pg_advisory_xact_lock(hashtext($1), hashtext($2))", store.schema, TABLE
        )
        await connection.execute(
            f"""
            create table if not exists {store.schema}.{TABLE} (
                account_id text primary key,
                currency text,
                status text not null,
                version bigint not null,
                updated_at timestamptz not null
            )
            """
        )




def account_consumer(
    nc: Client,
    store: EventStore,
    options: ConsumerOptions,
    *,
    durable_name: str = DURABLE_NAME,
    subject_prefix: str = ACCOUNT_EVENTS_PREFIX,
) -> DurableConsumer:
    """The durable consumer that keeps `risk_accounts`; call `ensure_table` before running it."""
    # One wildcard, not the four lifecycle subjects: several filter subjects need NATS 2.10,
    # and an older server silently ignores them and delivers the whole stream. The handler
    # skips the other account events (each still costs an inbox row).
    return DurableConsumer(
        nc, store, durable_name, f"{subject_prefix}.>", _handler(store.schema), options
    )


def _handler(schema: str) -> ConsumerHandler:
    async def apply(connection: Connection, event: ConsumedEvent) -> None:
        await apply_account_event(connection, schema, event)

    return apply


async def apply_account_event(connection: Connection, schema: str, event: ConsumedEvent) -> None:
    """Fold one account event into the view, unless the row reflects a newer one already.

    The currency is kept from `AccountOpened` even when that event arrives after a later one.
    """
    status = STATUS_AFTER.get(event.event_type)
    if status is None:
        return
    assert event.stream_id.startswith(ACCOUNT_STREAM_PREFIX), f"{event.stream_id} is no account"
    account_id = event.stream_id.removeprefix(ACCOUNT_STREAM_PREFIX)
    currency = event.data.get("currency") if event.event_type == "AccountOpened" else None
    table = f"{schema}.{TABLE}"
    await connection.execute(
        f"insert into {table} as known ({_COLUMNS}) values ($1, $2, $3, $4, $5)"
        " on conflict (account_id) do update set"
        " currency = coalesce(known.currency, excluded.currency),"
        " status = case when excluded.version > known.version"
        "   then excluded.status else known.status end,"
        " version = greatest(known.version, excluded.version),"
        " updated_at = case when excluded.version > known.version"
        "   then excluded.updated_at else known.updated_at end",
        account_id, currency, status, event.stream_version, event.recorded_at,
    )


async def account_views(
    executor: Executor, schema: str, account_ids: Iterable[str]
) -> dict[str, AccountView]:
    """The views of the given accounts that risk knows (opened ones); unknown ids are absent."""
    rows = await executor.fetch(
        f"select account_id, currency, status from {schema}.{TABLE}"
        " where account_id = any($1::text[]) and currency is not null",
        sorted(set(account_ids)),
    )
    return {
        row["account_id"]: AccountView(row["account_id"], row["currency"], row["status"])
        for row in rows
    }


@dataclass(slots=True)
class _Wait:
    """A command waiting for the view: when it first asked, the stream sequence the view
    must have handled (taken once the grace has passed), and whether it has."""

    first_asked_s: float
    target: int | None = None
    is_current: bool = False


class ViewProgress:
    """Whether the view holds every account event committed before a command first asked:
    the test of a refusal the view alone would make (unknown or frozen account).

    An account event reaches the view in two hops, each of which lags: the account service's
    relay publishes it to JetStream within about its subscription poll interval (`grace_s`),
    then the view's consumer handles it. So a command is answered only once `grace_s` has
    passed since its first ask, and then once the consumer has handled every message the
    stream held at that moment. "Nothing pending now" would be no such test: under a steady
    flow of account events the consumer is always a few messages behind, and an unknown
    account would be asked about again until the saga gave up. Until then the command is
    asked again (CommandNotReady; the saga retries with the same command id). The last
    `max_waiting` waits are kept in memory, a command found current remembering it (the
    view only moves on): a retry that reaches another replica starts a wait of its own there.
    """

    def __init__(self, consumer: DurableConsumer, grace_s: float, *,
                 clock: Callable[[], float] = time.monotonic,
                 max_waiting: int = MAX_WAITING_COMMANDS) -> None:  # fmt: skip
        assert grace_s >= 0, "a grace is not negative"
        self._consumer = consumer
        self._grace_s = grace_s
        self._clock = clock
        self._max_waiting = max_waiting
        self._waits: OrderedDict[uuid.UUID, _Wait] = OrderedDict()

    def is_known_current(self, command_id: uuid.UUID) -> bool:
        """True when `is_current_for` found the view current for the command already: no
        I/O, so it may be asked inside a transaction."""
        wait = self._waits.get(command_id)
        return wait is not None and wait.is_current

    async def is_current_for(self, command_id: uuid.UUID) -> bool:
        """True when the view holds every account event committed before the command's
        first ask; False when the command must ask again later. It may ask NATS, so it is
        asked with no transaction open (a view read after it returns True holds those
        events). Raises nats.errors.Error when NATS does not answer."""
        wait = self._waits.get(command_id)
        if wait is None:
            wait = self._waits[command_id] = _Wait(self._clock())
            while len(self._waits) > self._max_waiting:
                self._waits.popitem(last=False)
        if wait.is_current:
            return True
        if self._clock() - wait.first_asked_s < self._grace_s:
            return False
        if wait.target is None:
            wait.target = await self._consumer.stream_last_sequence()
        if not await self._consumer.has_handled_through(wait.target):
            return False
        # Remembered, not forgotten: the view only moves on, and the command runs again
        # once this returns, asking `is_known_current` in its transaction.
        wait.is_current = True
        return True
