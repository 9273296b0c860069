"""Reads for the account API: the inline read models (strongly consistent, written with the
events) and, for history and audit, the events themselves."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from account_service.domain import AccountState, evolve
from account_service.errors import AccountNotFound
from account_service.events import from_recorded, stream_of
from account_service.projections import BALANCE_COLUMNS
from eventstore import EventStore, RecordedEvent, StreamNotFound
from eventstore._db import Executor

FOLD_PAGE_EVENTS: Final = 1_000
"""Events read per round trip when folding an account's history."""
_ENTRY_COLUMNS: Final = (
    "global_position, entry_id, kind, amount_minor, balance_after_minor, transfer_id,"
    " reference, recorded_at"
)


async def account_row(store: EventStore, executor: Executor, account_id: str) -> Any:
    """The account's balances row; AccountNotFound when it was never opened."""
    row = await executor.fetchrow(
        f"select {BALANCE_COLUMNS} from {store.schema}.balances where account_id = $1",
        account_id,
    )
    if row is None:
        raise AccountNotFound(account_id)
    return row


async def account_rows(
    store: EventStore, filters: dict[str, str | None], after: str | None, limit: int
) -> list[Any]:
    """Up to `limit` balances rows matching the non-None `filters`, by id, after `after`."""
    conditions: list[str] = []
    arguments: list[object] = []
    for column, value in (*filters.items(), ("account_id", after)):
        if value is not None:
            arguments.append(value)
            operator = ">" if column == "account_id" else "="
            conditions.append(f"{column} {operator} ${len(arguments)}")
    where = f"where {' and '.join(conditions)}" if conditions else ""
    arguments.append(limit)
    return await store.pool.fetch(
        f"select {BALANCE_COLUMNS} from {store.schema}.balances {where}"
        f" order by account_id limit ${len(arguments)}",
        *arguments,
    )


async def entry_rows(
    store: EventStore, executor: Executor, account_id: str, *, after: int | None,
    as_of: datetime | None, limit: int,
) -> list[Any]:
    """Up to `limit` posted entries of the account in order, after position `after`,
    recorded at or before `as_of`."""
    return await executor.fetch(
        f"select {_ENTRY_COLUMNS} from {store.schema}.entries where account_id = $1"
        " and global_position > $2 and ($3::timestamptz is null or recorded_at <= $3)"
        " order by global_position limit $4",
        account_id, after or 0, as_of, limit,
    )


async def entry_row(store: EventStore, executor: Executor, global_position: int) -> Any:
    """The entry an event at `global_position` recorded."""
    row = await executor.fetchrow(
        f"select {_ENTRY_COLUMNS} from {store.schema}.entries where global_position = $1",
        global_position,
    )
    assert row is not None, "the inline entries projection records every movement"
    return row


async def state_as_of(store: EventStore, account_id: str, as_of: datetime) -> AccountState | None:
    """The account as its events recorded at or before `as_of` left it (None: not open yet).

    Folds the stream from its first event and stops at the first event recorded later, so
    the state is always that of a whole prefix of the stream. Raises AccountNotFound.
    """
    state: AccountState | None = None
    next_version = 1
    while True:
        page = await _stream_page(store, account_id, next_version, FOLD_PAGE_EVENTS)
        for event in page:
            if event.recorded_at > as_of:
                return state
            state = evolve(state, from_recorded(event))
        if len(page) < FOLD_PAGE_EVENTS:
            return state
        next_version = page[-1].stream_version + 1


async def audit_events(
    store: EventStore, account_id: str, *, after: int | None, limit: int
) -> list[RecordedEvent]:
    """Up to `limit` of the account's stored events after version `after`."""
    return await _stream_page(store, account_id, (after or 0) + 1, limit)


async def _stream_page(
    store: EventStore, account_id: str, from_version: int, limit: int
) -> list[RecordedEvent]:
    try:
        return await store.read_stream(stream_of(account_id), from_version=from_version,
                                       limit=limit)
    except StreamNotFound:
        raise AccountNotFound(account_id) from None
