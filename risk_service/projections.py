"""The risk service's inline read models: each account's folded state, and every decision
(the third, the cancelled exposures, is in `risk_service/cancellations.py`).

Both fold a page of events (an append's unit of work, a rebuild's pages) in a constant
number of statements (`apply_batch`), row for row as `apply` one event at a time would.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType
from typing import Any, Final

import orjson

from eventstore import Projection, RecordedEvent, unnest_columns
from eventstore._db import Connection
from risk_service.cancellations import CancelledExposuresProjection
from risk_service.contracts import Limits
from risk_service.domain import Exposure, RiskState, evolve, initial_state
from risk_service.events import CATEGORY, account_id_of, from_recorded

STATE_COLUMNS = "account_id, state, version, updated_at"
_STATE_UPSERT: Final = (
    "on conflict (account_id) do update set state = excluded.state,"
    " version = excluded.version, updated_at = excluded.updated_at"
)
_DECISION_COLUMNS: Final = (
    "global_position, account_id, transfer_id, leg_id, outcome, reason, detail, amount_minor,"
    " currency, limits, decided_at, tx_id"
)
_DECISION_TYPES: Final = ("ExposureReserved", "MovementRefused")
_MAX_JSON_NUMBER: Final = 2**64 - 1
"""The largest outflow a state row keeps as a JSON number. orjson writes no integer beyond
64 bits and reads one back as a float, while a minute's outflow of an account without a
daily limit may exceed that (20 movements of 10**18): larger ones are kept as strings."""


class RiskStatesProjection(Projection):
    """One row per account holding its folded risk state, so commands never replay."""

    name = "risk_states"
    table = "risk_states"
    key_columns = ("account_id",)

    def create_sql(self, table: str) -> str:
        """The states table."""
        return f"""
            create table {table} (
                account_id text primary key,
                state jsonb not null,
                version bigint not null,
                updated_at timestamptz not null
            )
        """

    async def apply(self, connection: Connection, table: str, event: RecordedEvent) -> None:
        """Fold the event into its account's row."""
        if event.category != CATEGORY:
            return
        account_id = account_id_of(event.stream_id)
        row = await connection.fetchrow(
            f"select {STATE_COLUMNS} from {table} where account_id = $1", account_id
        )
        state = state_from_row(row) if row is not None else initial_state(account_id)
        await connection.execute(
            f"insert into {table} ({STATE_COLUMNS}) values ($1, $2::jsonb, $3, $4)"
            f" {_STATE_UPSERT}",
            *_folded_state(state, [event]),
        )

    async def apply_batch(
        self, connection: Connection, table: str, events: Sequence[RecordedEvent]
    ) -> None:
        """Fold a page of events as `apply` would, in two statements: one read of the rows
        of every account in the page, one upsert of their folded rows."""
        by_account: dict[str, list[RecordedEvent]] = {}
        for event in events:
            if event.category == CATEGORY:
                by_account.setdefault(account_id_of(event.stream_id), []).append(event)
        if not by_account:
            return
        rows = await connection.fetch(
            f"select {STATE_COLUMNS} from {table} where account_id = any($1::text[])",
            list(by_account),
        )
        stored = {row["account_id"]: state_from_row(row) for row in rows}
        folded = [
            _folded_state(stored[account_id] if account_id in stored
                          else initial_state(account_id), its_events)
            for account_id, its_events in by_account.items()
        ]
        await connection.execute(
            f"insert into {table} ({STATE_COLUMNS}) select * from"
            f" unnest($1::text[], $2::jsonb[], $3::bigint[], $4::timestamptz[]) {_STATE_UPSERT}",
            *unnest_columns(folded),
        )


class DecisionsProjection(Projection):
    """Every approval and refusal, for `GET /v1/risk/decisions`."""

    name = "risk_decisions"
    table = "risk_decisions"
    key_columns = ("global_position",)
    version = 2
    """2: `tx_id`, so that the list pages in commit order."""

    def create_sql(self, table: str) -> str:
        """The decisions table. The list pages in commit order, `(tx_id, global_position)`;
        the default gives `tx_id` to rows inserted in the append's transaction by a replica
        of an older version (a rolling upgrade)."""
        return f"""
            create table {table} (
                global_position bigint primary key,
                account_id text not null,
                transfer_id text not null,
                leg_id text not null,
                outcome text not null,
                reason text,
                detail text,
                amount_minor bigint not null,
                currency text not null,
                limits jsonb not null,
                decided_at timestamptz not null,
                tx_id xid8 not null default pg_current_xact_id()
            );
            create index on {table} (tx_id, global_position);
            create index on {table} (account_id, tx_id, global_position);
            create index on {table} (outcome, tx_id, global_position);
        """

    async def apply(self, connection: Connection, table: str, event: RecordedEvent) -> None:
        """Record ExposureReserved (approved) and MovementRefused (refused)."""
        if event.event_type not in _DECISION_TYPES:
            return
        await connection.execute(
            f"insert into {table} ({_DECISION_COLUMNS})"
            " values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11, $12)",
            *_decision_row(event),
        )

    async def apply_batch(
        self, connection: Connection, table: str, events: Sequence[RecordedEvent]
    ) -> None:
        """Record a page's decisions as `apply` would, in one insert."""
        decided = [_decision_row(event) for event in events if event.event_type in _DECISION_TYPES]
        if not decided:
            return
        await connection.execute(
            f"insert into {table} ({_DECISION_COLUMNS}) select * from unnest($1::bigint[],"
            " $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],"
            " $8::bigint[], $9::text[], $10::jsonb[], $11::timestamptz[], $12::xid8[])",
            *unnest_columns(decided),
        )


def _folded_state(state: RiskState, events: Sequence[RecordedEvent]) -> tuple[Any, ...]:
    """The risk_states row of `state` after `events` (one account's, in stream order)."""
    for event in events:
        state = evolve(state, from_recorded(event))
        assert state.version == event.stream_version, "risk state row skipped an event"
    return (state.account_id, orjson.dumps(state_to_json(state)).decode(), state.version,
            events[-1].recorded_at)  # fmt: skip


def _decision_row(event: RecordedEvent) -> tuple[Any, ...]:
    """The risk_decisions row of an ExposureReserved or MovementRefused event."""
    data = event.data
    is_approved = event.event_type == "ExposureReserved"
    return (
        event.global_position, account_id_of(event.stream_id), data["transfer_id"],
        data["leg_id"], "approved" if is_approved else "refused", data.get("reason"),
        data.get("detail"), data["amount_minor"], data["currency"],
        orjson.dumps(data["limits"]).decode(), event.recorded_at, event.tx_id,
    )  # fmt: skip


def state_to_json(state: RiskState) -> dict[str, Any]:
    """The state as stored in its row."""
    return {
        "account_id": state.account_id,
        "limits": state.limits.model_dump(mode="json"),
        "blocked_reason": state.blocked_reason,
        "open_exposures": {k: e.amount_minor for k, e in state.open_exposures.items()},
        "outflow_by_minute": {str(k): _json_int(v) for k, v in state.outflow_by_minute.items()},
        "approvals_by_second": {str(k): v for k, v in state.approvals_by_second.items()},
        "version": state.version,
    }


def state_from_row(row: Any) -> RiskState:
    """The state stored in a risk_states row."""
    stored = orjson.loads(row["state"])
    return RiskState(
        account_id=stored["account_id"],
        limits=Limits.model_validate(stored["limits"]),
        blocked_reason=stored["blocked_reason"],
        open_exposures=MappingProxyType(
            {k: Exposure(k, amount) for k, amount in stored["open_exposures"].items()}
        ),
        outflow_by_minute=MappingProxyType(
            {int(k): int(v) for k, v in stored["outflow_by_minute"].items()}
        ),
        approvals_by_second=MappingProxyType(
            {int(k): v for k, v in stored["approvals_by_second"].items()}
        ),
        version=stored["version"],
    )


def _json_int(value: int) -> int | str:
    """`value` as a state row keeps it: a number when orjson can write it, else a string."""
    return value if value <= _MAX_JSON_NUMBER else str(value)


def inline_projections() -> tuple[Projection, ...]:
    """The risk service's inline read models, in the order they are applied: each
    account's folded state, every decision, and the exposures cancelled before they were
    assessed (`risk_service/cancellations.py`)."""
    return (RiskStatesProjection(), DecisionsProjection(), CancelledExposuresProjection())
