"""Loading and saving an account's risk state: its state row plus any newer events."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import orjson

from eventstore import NO_STREAM, EventStore, RecordedEvent, UnitOfWork
from eventstore._db import Executor
from risk_service.contracts import RiskEvent
from risk_service.domain import RiskState, fold, initial_state
from risk_service.events import decode, stream_of, to_new_event
from risk_service.projections import STATE_COLUMNS, state_from_row

Decision = Callable[[RiskState], list[RiskEvent]]


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


async def decide_and_save(
    unit: UnitOfWork, account_id: str, decision: Decision
) -> tuple[RiskState, list[RiskEvent]]:
    """Load in the unit's transaction, decide, append; return the new state and the events."""
    state = await load(unit.store, unit.connection, account_id)
    events = decision(state)
    await save(unit, state, events)
    return fold(state, events), events
