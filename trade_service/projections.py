"""The trade service's read model, inline (written in the append's transaction).

`settlements`: one row per transfer or trade with its legs, status and outcome, so reads
after a write see it, lists filter by account (the from or to account of any leg) and
status, and the saga's commands load a settlement with one row read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import orjson

from eventstore import Projection, RecordedEvent, unnest_columns
from eventstore._db import Connection
from trade_service.contracts import (
    SettlementLeg,
    SettlementStatus,
    TradeEvent,
    TradeRequested,
    TransferRequested,
)
from trade_service.domain import Settlement, SettlementKind, evolve
from trade_service.events import from_recorded, settlement_of

TABLE: Final = "settlements"
SETTLEMENT_COLUMNS: Final = (
    "transfer_id, kind, status, reason, detail, legs, accounts, reference, instrument,"
    " quantity_minor, price, version, position, tx_id, created_at, updated_at"
)
_COLUMN_NAMES: Final = tuple(name.strip() for name in SETTLEMENT_COLUMNS.split(","))


class SettlementsProjection(Projection):
    """One row per transfer or trade: as its events left it."""

    name = "settlements"
    table = TABLE
    key_columns = ("transfer_id",)
    version = 2
    """2: `tx_id`, so that lists page in commit order."""

    def create_sql(self, table: str) -> str:
        """The settlements table. Lists page by the request's place in commit order,
        `(tx_id, position)`; the default gives `tx_id` to rows inserted in the append's
        transaction by a replica of an older version (a rolling upgrade)."""
        return f"""
            create table {table} (
                transfer_id text primary key,
                kind text not null,
                status text not null,
                reason text,
                detail text,
                legs jsonb not null,
                accounts text[] not null,
                reference text,
                instrument text,
                quantity_minor bigint,
                price text,
                version bigint not null,
                position bigint not null,
                tx_id xid8 not null default pg_current_xact_id(),
                created_at timestamptz not null,
                updated_at timestamptz not null
            );
            create index on {table} (kind, tx_id, position);
            create index on {table} using gin (accounts);
        """

    async def apply(self, connection: Connection, table: str, event: RecordedEvent) -> None:
        """Insert a settlement when requested; record its outcome when it ends."""
        if settlement_of(event.stream_id) is None:
            return
        match from_recorded(event):
            case TransferRequested() | TradeRequested() as requested:
                await _insert(connection, table, requested, event)
            case ended:
                row = await connection.fetchrow(
                    f"select {SETTLEMENT_COLUMNS} from {table} where transfer_id = $1",
                    _transfer_id(event),
                )
                assert row is not None, "an outcome follows its request"
                state = evolve(state_from_row(row), ended)
                assert state.version == event.stream_version, "settlements row skipped an event"
                await connection.execute(
                    f"update {table} set status = $2, reason = $3, detail = $4, version = $5,"
                    " updated_at = $6 where transfer_id = $1",
                    state.transfer_id, state.status.value, state.reason, state.detail,
                    state.version, event.recorded_at,
                )

    async def apply_batch(
        self, connection: Connection, table: str, events: Sequence[RecordedEvent]
    ) -> None:
        """Fold a page as `apply` would: each request inserted, then the outcomes of every
        settlement in the page folded onto its row, read in one statement and written in
        one (the saga's outcome commands end many settlements per transaction)."""
        ended: dict[str, list[tuple[RecordedEvent, TradeEvent]]] = {}
        for event in events:
            if settlement_of(event.stream_id) is None:
                continue
            match from_recorded(event):
                case TransferRequested() | TradeRequested() as requested:
                    await _insert(connection, table, requested, event)
                case outcome:
                    ended.setdefault(_transfer_id(event), []).append((event, outcome))
        if not ended:
            return
        rows = await connection.fetch(
            f"select {SETTLEMENT_COLUMNS} from {table} where transfer_id = any($1::text[])",
            list(ended),
        )
        assert len(rows) == len(ended), "an outcome follows its request"
        folded = [_folded(state_from_row(row), ended[row["transfer_id"]]) for row in rows]
        await connection.execute(
            f"update {table} as s set status = u.status, reason = u.reason,"
            " detail = u.detail, version = u.version, updated_at = u.updated_at"
            " from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[],"
            " $6::timestamptz[]) as u(transfer_id, status, reason, detail, version, updated_at)"
            " where s.transfer_id = u.transfer_id",
            *unnest_columns(folded),
        )


def _folded(
    state: Settlement, outcomes: Sequence[tuple[RecordedEvent, TradeEvent]]
) -> tuple[Any, ...]:
    """The update of one settlement's row after its outcome events of a page."""
    for event, outcome in outcomes:
        state = evolve(state, outcome)
        assert state.version == event.stream_version, "settlements row skipped an event"
    return (state.transfer_id, state.status.value, state.reason, state.detail, state.version,
            outcomes[-1][0].recorded_at)  # fmt: skip


async def _insert(
    connection: Connection, table: str, requested: TransferRequested | TradeRequested,
    event: RecordedEvent,
) -> None:
    row = requested_row(requested, event)
    assert tuple(row) == _COLUMN_NAMES, "the values in the order of SETTLEMENT_COLUMNS"
    # No "on conflict": a settlement is requested once, and the key refuses a second loudly.
    await connection.execute(
        f"insert into {table} ({SETTLEMENT_COLUMNS}) values"
        " ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        *row.values(),
    )


def requested_row(
    requested: TransferRequested | TradeRequested, event: RecordedEvent
) -> dict[str, Any]:
    """The settlements row a request inserts (the columns of SETTLEMENT_COLUMNS, in order),
    as it reads back: the POST answers from it without reading it."""
    state = evolve(None, requested)
    assert event.stream_version == state.version, "a request is its stream's first event"
    legs = [leg.model_dump(mode="json") for leg in state.legs]
    trade = requested if isinstance(requested, TradeRequested) else None
    return {
        "transfer_id": state.transfer_id, "kind": state.kind.value,
        "status": state.status.value, "reason": None, "detail": None,
        "legs": orjson.dumps(legs).decode(),
        "accounts": sorted({a for leg in state.legs for a in (leg.from_account, leg.to_account)}),
        "reference": requested.reference if isinstance(requested, TransferRequested) else None,
        "instrument": trade.instrument if trade else None,
        "quantity_minor": trade.quantity_minor if trade else None,
        "price": trade.price if trade else None,
        "version": state.version, "position": event.global_position, "tx_id": event.tx_id,
        "created_at": event.recorded_at, "updated_at": event.recorded_at,
    }


def _transfer_id(event: RecordedEvent) -> str:
    found = settlement_of(event.stream_id)
    assert found is not None, "only settlement streams reach here"
    _, transfer_id = found
    return transfer_id


def state_from_row(row: Any) -> Settlement:
    """The settlement stored in a settlements row."""
    legs = tuple(SettlementLeg.model_validate(leg) for leg in orjson.loads(row["legs"]))
    return Settlement(
        row["transfer_id"], SettlementKind(row["kind"]), legs, SettlementStatus(row["status"]),
        row["reason"], row["detail"], row["version"],
    )
