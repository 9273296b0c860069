"""Loading and saving an account's risk state: its state row plus any newer events.

A command never replays an account's stream: the inline `risk_states` row is its folded
state as of `version`, and only the events after it (normally none) are read. `load_many`
and `save_many` do the same for every payer of a batch of commands in a constant number of
statements.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Final

import orjson

import eventstore
from eventstore import NO_STREAM, Append, EventStore, NewEvent, RecordedEvent, UnitOfWork
from eventstore._db import Executor
from risk_service.contracts import RiskEvent
from risk_service.domain import RiskState, fold, initial_state
from risk_service.events import account_id_of, decode, stream_of, to_new_event
from risk_service.projections import STATE_COLUMNS, state_from_row

Decision = Callable[[RiskState], list[RiskEvent]]
_STREAM_PREFIX: Final = stream_of("")
"""`risk-`: an account's risk stream id is this and its id."""


async def load(store: EventStore, executor: Executor, account_id: str) -> RiskState:
    """The account's risk state (the initial one when risk has never seen it)."""
    row = await executor.fetchrow(
        f"select {STATE_COLUMNS} from {store.schema}.risk_states where account_id = $1",
        account_id,
    )
    state = state_from_row(row) if row is not None else initial_state(account_id)
    rows = await executor.fetch(
        f"select event_type, data from {store.schema}.events where stream_id = $1"
        " and stream_version > $2 order by stream_version",
        stream_of(account_id),
        state.version,
    )
    return fold(state, [decode(row["event_type"], orjson.loads(row["data"])) for row in rows])


async def load_many(
    store: EventStore, executor: Executor, account_ids: Iterable[str]
) -> dict[str, RiskState]:
    """`load` of many accounts, their risk streams locked first (`lock_streams`). Every
    account is in the result (the initial state when risk has never seen it).

    Two statements (the locks; the state rows with their streams' versions), and a third
    only when a stream may be ahead of its row (an account without a row, or events the
    inline projection has not folded): the events after the row's version."""
    ids = sorted(set(account_ids))
    await lock_streams(store, executor, ids)
    rows = await executor.fetch(
        f"select {STATE_COLUMNS}, (select s.version from {store.schema}.streams s"
        f" where s.stream_id = $2 || r.account_id) as stream_version"
        f" from {store.schema}.risk_states r where r.account_id = any($1::text[])",
        ids, _STREAM_PREFIX,
    )  # fmt: skip
    states = {account_id: initial_state(account_id) for account_id in ids}
    behind = set(ids)
    for row in rows:
        states[row["account_id"]] = state_from_row(row)
        if row["stream_version"] == row["version"]:
            behind.remove(row["account_id"])
    for account_id, events in (await _newer_events(store, executor, states, behind)).items():
        states[account_id] = fold(states[account_id], events)
    return states


async def _newer_events(
    store: EventStore, executor: Executor, states: dict[str, RiskState], behind: set[str]
) -> dict[str, list[RiskEvent]]:
    """The events of the `behind` accounts' risk streams after their states' versions, in
    one statement (none when no account is behind)."""
    if not behind:
        return {}
    account_ids = sorted(behind)
    # A lateral subquery the planner cannot pull up (its order by): an index scan per
    # stream whatever the plan. A plain join's generic plan, made while the table looks
    # small, can be a hash join over every event.
    rows = await executor.fetch(
        f"select s.stream_id, e.event_type, e.data from unnest($1::text[], $2::bigint[])"
        " as s (stream_id, after_version) cross join lateral (select event_type, data,"
        f" stream_version from {store.schema}.events where stream_id = s.stream_id"
        " and stream_version > s.after_version order by stream_version) as e"
        " order by s.stream_id, e.stream_version",
        [stream_of(account_id) for account_id in account_ids],
        [states[account_id].version for account_id in account_ids],
    )
    events_of: dict[str, list[RiskEvent]] = {}
    for row in rows:
        events = events_of.setdefault(account_id_of(row["stream_id"]), [])
        events.append(decode(row["event_type"], orjson.loads(row["data"])))
    return events_of


async def lock_streams(store: EventStore, executor: Executor, account_ids: Iterable[str]
                       ) -> None:  # fmt: skip
    """Queue for the accounts' risk streams on the event store's per-stream lock, in id
    order (`eventstore.lock_streams`), so that concurrent commands over one account queue
    instead of failing on a version conflict, and never deadlock."""
    await eventstore.lock_streams(executor, store.schema,
                                  [stream_of(account_id) for account_id in account_ids])


async def save(
    unit: UnitOfWork, state: RiskState, events: Sequence[RiskEvent]
) -> list[RecordedEvent]:
    """Append `events` if the account's risk stream is still at `state.version`."""
    if not events:
        return []
    expected = state.version if state.version > 0 else NO_STREAM
    stream_id = stream_of(state.account_id)
    result = await unit.append(stream_id, [to_new_event(e) for e in events], expected)
    return list(result.events)


async def save_many(
    unit: UnitOfWork, changes: Sequence[tuple[RiskState, Sequence[NewEvent]]]
) -> None:
    """`save` of many accounts' `(state loaded, events)` in one round trip; an account
    without events is left out."""
    await unit.append_many([
        Append(stream_of(state.account_id), events,
               state.version if state.version > 0 else NO_STREAM)
        for state, events in changes if events
    ])  # fmt: skip


async def decide_and_save(
    unit: UnitOfWork, account_id: str, decision: Decision
) -> tuple[RiskState, list[RiskEvent]]:
    """Load in the unit's transaction, decide, append; return the new state and the events."""
    state = await load(unit.store, unit.connection, account_id)
    events = decision(state)
    await save(unit, state, events)
    return fold(state, events), events
