"""Loading and saving accounts: the balances row plus any newer events, then an append.

An account is never replayed from its first event on a command: the inline balances row is
its folded state as of `version`, and only events after it (normally none) are read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import orjson

import eventstore
from account_service.contracts import AccountEvent
from account_service.domain import AccountState, fold
from account_service.errors import AccountNotFound
from account_service.events import account_id_of, decode, stream_of, to_new_event
from account_service.projections import BALANCE_COLUMNS, state_from_row
from eventstore import NO_STREAM, Append, EventStore, NewEvent, RecordedEvent, UnitOfWork
from eventstore._db import Executor

Decision = Callable[[AccountState], list[AccountEvent]]


async def load(
    store: EventStore, executor: Executor, account_id: str, *, for_update: bool = False,
    is_stream_locked: bool = False,
) -> AccountState | None:
    """The account's current state, or None when it was never opened.

    `for_update` locks the account's stream and balances row until the transaction ends, so
    writers of one account queue for it instead of racing to the append and retrying;
    `is_stream_locked`: the caller took the stream's lock already (`lock_streams`).
    """
    if for_update and not is_stream_locked:
        await lock_streams(store, executor, [account_id])
    lock = " for update" if for_update else ""
    row = await executor.fetchrow(
        f"select {BALANCE_COLUMNS} from {store.schema}.balances where account_id = $1{lock}",
        account_id,
    )
    state = state_from_row(row) if row is not None else None
    from_version = state.version + 1 if state is not None else 1
    rows = await executor.fetch(
        f"select event_type, data from {store.schema}.events where stream_id = $1"
        " and stream_version >= $2 order by stream_version",
        stream_of(account_id),
        from_version,
    )
    if not rows:
        return state
    return fold([decode(row["event_type"], orjson.loads(row["data"])) for row in rows], state)


async def load_many(
    store: EventStore, executor: Executor, account_ids: Iterable[str]
) -> dict[str, AccountState]:
    """`load(..., for_update=True)` of many accounts in three statements: their streams and
    balances rows locked in account id order, and any newer events folded in. Accounts
    never opened are not in the result."""
    ids = sorted(set(account_ids))
    await lock_streams(store, executor, ids)
    rows = await executor.fetch(
        f"select {BALANCE_COLUMNS} from {store.schema}.balances"
        " where account_id = any($1::text[]) order by account_id for update",
        ids,
    )
    states = {row["account_id"]: state_from_row(row) for row in rows}
    # A lateral subquery the planner cannot pull up (its order by): an index scan per stream
    # whatever the plan. A plain join's generic plan, made while the table looks small, can
    # be a hash join over every event.
    newer = await executor.fetch(
        f"select s.stream_id, e.event_type, e.data from unnest($1::text[], $2::bigint[])"
        " as s (stream_id, from_version) cross join lateral (select event_type, data,"
        f" stream_version from {store.schema}.events where stream_id = s.stream_id"
        " and stream_version >= s.from_version order by stream_version) as e"
        " order by s.stream_id, e.stream_version",
        [stream_of(account_id) for account_id in ids],
        [states[account_id].version + 1 if account_id in states else 1 for account_id in ids],
    )
    events_of: dict[str, list[AccountEvent]] = {}
    for row in newer:
        events = events_of.setdefault(account_id_of(row["stream_id"]), [])
        events.append(decode(row["event_type"], orjson.loads(row["data"])))
    for account_id, events in events_of.items():
        folded = fold(events, states.get(account_id))
        if folded is not None:
            states[account_id] = folded
    return states


async def lock_streams(store: EventStore, executor: Executor, account_ids: Iterable[str]
                       ) -> None:  # fmt: skip
    """Queue for the accounts' streams on the event store's per-stream lock, in id order
    (`eventstore.lock_streams`), before any row lock; held until the transaction ends."""
    await eventstore.lock_streams(executor, store.schema,
                                  [stream_of(account_id) for account_id in account_ids])


async def require(
    store: EventStore, executor: Executor, account_id: str, *, for_update: bool = False
) -> AccountState:
    """The account's state; AccountNotFound when it does not exist."""
    state = await load(store, executor, account_id, for_update=for_update)
    if state is None:
        raise AccountNotFound(account_id)
    return state


async def save(
    unit: UnitOfWork, state: AccountState | None, account_id: str, events: Sequence[AccountEvent]
) -> list[RecordedEvent]:
    """Append `events` if the account is still at `state.version`; else ConcurrencyError."""
    if not events:
        return []
    expected = state.version if state is not None else NO_STREAM
    result = await unit.append(stream_of(account_id), [to_new_event(e) for e in events], expected)
    return list(result.events)


async def save_many(
    unit: UnitOfWork, changes: Sequence[tuple[AccountState | None, str, Sequence[NewEvent]]]
) -> None:
    """`save` of many accounts' `(state loaded, account id, events)` in one round trip."""
    await unit.append_many([
        Append(stream_of(account_id), events, state.version if state is not None else NO_STREAM)
        for state, account_id, events in changes if events
    ])  # fmt: skip


async def decide_and_save(
    unit: UnitOfWork, account_id: str, decision: Decision
) -> tuple[AccountState, list[RecordedEvent]]:
    """Load (and lock) the account in the unit's transaction, decide, append; return the new
    state. Raises AccountNotFound, the decision's AccountError, or ConcurrencyError."""
    state = await require(unit.store, unit.connection, account_id, for_update=True)
    events = decision(state)
    recorded = await save(unit, state, account_id, events)
    return fold(events, state) or state, recorded

