"""Loading and saving settlements: the settlements row (the folded state), then an append."""

from __future__ import annotations

from collections.abc import Sequence

from eventstore import Append, EventStore, NewEvent, RecordedEvent, UnitOfWork, lock_streams
from eventstore._db import Executor
from trade_service.contracts import TradeEvent
from trade_service.domain import Settlement, SettlementKind, SettlementNotFound
from trade_service.events import stream_of, to_new_event
from trade_service.projections import SETTLEMENT_COLUMNS, TABLE, state_from_row


async def load(
    store: EventStore, executor: Executor, transfer_id: str, *, for_update: bool = False
) -> Settlement | None:
    """The settlement's current state, or None when it was never requested.

    The inline row is current as of the last commit; `for_update` locks it until the
    transaction ends, so two outcomes of one settlement queue instead of racing.
    """
    lock = " for update" if for_update else ""
    row = await executor.fetchrow(
        f"select {SETTLEMENT_COLUMNS} from {store.schema}.{TABLE} where transfer_id = $1{lock}",
        transfer_id,
    )
    return state_from_row(row) if row is not None else None


async def load_many(
    store: EventStore, executor: Executor, transfer_ids: Sequence[str]
) -> dict[str, Settlement]:
    """`load(..., for_update=True)` of many settlements in two statements: their streams
    locked first, then their rows, both in id order; those never requested are not in the
    result.

    The streams' locks (the event store's per-stream lock, which takes no transaction id)
    come first, so that this transaction's id is younger than the last writer's of every
    stream it appends to (docs/append-order.md). A settlement's kind is only known from its
    row, so both of its possible streams are locked."""
    ids = sorted(set(transfer_ids))
    streams = [stream_of(kind, transfer_id) for kind in SettlementKind for transfer_id in ids]
    await lock_streams(executor, store.schema, streams)
    rows = await executor.fetch(
        f"select {SETTLEMENT_COLUMNS} from {store.schema}.{TABLE}"
        " where transfer_id = any($1::text[]) order by transfer_id for update",
        ids,
    )
    return {row["transfer_id"]: state_from_row(row) for row in rows}


async def require(
    store: EventStore, executor: Executor, transfer_id: str, *, for_update: bool = False
) -> Settlement:
    """The settlement's state; SettlementNotFound when it does not exist."""
    state = await load(store, executor, transfer_id, for_update=for_update)
    if state is None:
        raise SettlementNotFound(transfer_id)
    return state


async def save(
    unit: UnitOfWork, state: Settlement, events: Sequence[TradeEvent]
) -> list[RecordedEvent]:
    """Append `events` if the settlement is still at `state.version`; else ConcurrencyError."""
    if not events:
        return []
    stream_id = stream_of(state.kind, state.transfer_id)
    result = await unit.append(stream_id, [to_new_event(e) for e in events], state.version)
    return list(result.events)


async def save_many(
    unit: UnitOfWork, changes: Sequence[tuple[Settlement, Sequence[NewEvent]]]
) -> None:
    """`save` of many settlements' `(state loaded, events)` in one round trip."""
    await unit.append_many([
        Append(stream_of(state.kind, state.transfer_id), events, state.version)
        for state, events in changes if events
    ])  # fmt: skip
