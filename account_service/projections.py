"""The account service's read models, all inline (written in the append's transaction).

`balances`: one row per account with everything the aggregate needs, so a command loads an
account with one row read instead of replaying its stream. `entries`: every posted movement
with its running balance, for history and statements. `holds`: every hold id ever placed
or cancelled and how it stands, so the saga commands know how a hold that is no longer
open ended (the account's state keeps only open holds, to stay bounded).
"""

from __future__ import annotations

from datetime import datetime
from types import MappingProxyType
from typing import Any, cast

import orjson

from account_service.contracts import (
    EntryKind,
    HoldCancelled,
    HoldPlaced,
    HoldPosted,
    HoldSide,
    HoldVoided,
    MovementKind,
)
from account_service.domain import AccountState, Hold, HoldStatus, Status, evolve
from account_service.events import account_id_of, from_recorded
from eventstore import Projection, RecordedEvent
from eventstore._db import Connection

BALANCE_COLUMNS = (
    "account_id, owner, currency, overdraft_limit_minor, status, posted_minor,"
    " pending_debits_minor, pending_credits_minor, open_holds, version, opened_at, updated_at"
)


class BalancesProjection(Projection):
    """One row per account: the folded state, current as of the append that changed it."""

    name = "balances"
    table = "balances"
    key_columns = ("account_id",)

    def create_sql(self, table: str) -> str:
        """The balances table."""
        return f"""
            create table {table} (
                account_id text primary key,
                owner text not null,
                currency text not null,
                overdraft_limit_minor bigint not null,
                status text not null,
                posted_minor bigint not null,
                pending_debits_minor bigint not null,
                pending_credits_minor bigint not null,
                open_holds jsonb not null,
                version bigint not null,
                opened_at timestamptz not null,
                updated_at timestamptz not null
            );
            create index on {table} (owner, currency, account_id);
        """

    async def apply(self, connection: Connection, table: str, event: RecordedEvent) -> None:
        """Fold the event into its account's row."""
        if not event.stream_id.startswith("account-"):
            return
        account_id = account_id_of(event.stream_id)
        row = await connection.fetchrow(
            f"select {BALANCE_COLUMNS} from {table} where account_id = $1", account_id
        )
        state = state_from_row(row) if row is not None else None
        state = evolve(state, from_recorded(event))
        assert state.version == event.stream_version, "balances row skipped an event"
        await connection.execute(
            f"insert into {table} ({BALANCE_COLUMNS}) values"
            " ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11, $11)"
            " on conflict (account_id) do update set status = excluded.status,"
            " posted_minor = excluded.posted_minor,"
            " pending_debits_minor = excluded.pending_debits_minor,"
            " pending_credits_minor = excluded.pending_credits_minor,"
            " open_holds = excluded.open_holds, version = excluded.version,"
            " updated_at = excluded.updated_at",
            *_row_values(state), event.recorded_at,
        )


class EntriesProjection(Projection):
    """Every posted movement of every account, with the balance right after it."""

    name = "entries"
    table = "entries"
    key_columns = ("global_position",)

    def create_sql(self, table: str) -> str:
        """The entries table."""
        return f"""
            create table {table} (
                global_position bigint primary key,
                account_id text not null,
                entry_id text not null,
                kind text not null,
                amount_minor bigint not null,
                balance_after_minor bigint not null,
                transfer_id text,
                reference text,
                recorded_at timestamptz not null
            );
            create index on {table} (account_id, global_position);
        """

    async def apply(self, connection: Connection, table: str, event: RecordedEvent) -> None:
        """Record deposits, withdrawals and posted holds."""
        movement = _movement(event)
        if movement is None:
            return
        account_id = account_id_of(event.stream_id)
        amount_minor, kind, transfer_id, reference, entry_id = movement
        previous = await connection.fetchval(
            f"select balance_after_minor from {table} where account_id = $1"
            " order by global_position desc limit 1",
            account_id,
        )
        await connection.execute(
            f"insert into {table} (global_position, account_id, entry_id, kind, amount_minor,"
            " balance_after_minor, transfer_id, reference, recorded_at)"
            " values ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            event.global_position, account_id, entry_id, kind, amount_minor,
            (previous or 0) + amount_minor, transfer_id, reference, event.recorded_at,
        )


class HoldsProjection(Projection):
    """One row per hold id: its account, terms and status (open, posted, voided, cancelled).

    A cancelled hold was voided before it was ever placed: it has no amount.
    """

    name = "holds"
    table = "holds"
    key_columns = ("hold_id",)

    def create_sql(self, table: str) -> str:
        """The holds table."""
        return f"""
            create table {table} (
                hold_id text primary key,
                account_id text not null,
                side text not null,
                amount_minor bigint,
                transfer_id text not null,
                status text not null,
                updated_at timestamptz not null
            );
        """

    async def apply(self, connection: Connection, table: str, event: RecordedEvent) -> None:
        """Insert a hold when placed or cancelled; mark it posted or voided when it ends."""
        if not event.stream_id.startswith("account-") or not event.event_type.startswith("Hold"):
            return
        account_id = account_id_of(event.stream_id)
        match from_recorded(event):
            case HoldPlaced() | HoldCancelled() as started:
                await _insert_hold(connection, table, account_id, started, event.recorded_at)
            case HoldPosted() | HoldVoided() as ended:
                status = HoldStatus.POSTED if isinstance(ended, HoldPosted) else HoldStatus.VOIDED
                result = await connection.execute(
                    f"update {table} set status = $3, updated_at = $4"
                    " where hold_id = $1 and account_id = $2 and status = 'open'",
                    ended.hold_id, account_id, status.value, event.recorded_at,
                )
                assert result == "UPDATE 1", "a hold ends once, and only after it was placed"


async def _insert_hold(
    connection: Connection, table: str, account_id: str, started: HoldPlaced | HoldCancelled,
    recorded_at: datetime,
) -> None:
    if isinstance(started, HoldPlaced):
        amount_minor: int | None = started.amount_minor
        status = HoldStatus.OPEN
    else:
        amount_minor, status = None, HoldStatus.CANCELLED
    # No "on conflict": a hold id is placed or cancelled once, on one account, and the
    # primary key refuses a second one loudly.
    await connection.execute(
        f"insert into {table} (hold_id, account_id, side, amount_minor, transfer_id, status,"
        " updated_at) values ($1, $2, $3, $4, $5, $6, $7)",
        started.hold_id, account_id, started.side.value, amount_minor, started.transfer_id,
        status.value, recorded_at,
    )


def state_from_row(row: Any) -> AccountState:
    """The account state stored in a balances row."""
    holds = {
        hold_id: Hold(hold_id, HoldSide(hold["side"]), hold["amount_minor"], hold["transfer_id"],
                      cast(MovementKind, EntryKind(hold["kind"])))
        for hold_id, hold in orjson.loads(row["open_holds"]).items()
    }
    return AccountState(
        row["account_id"], row["owner"], row["currency"], row["overdraft_limit_minor"],
        Status(row["status"]), row["posted_minor"], row["pending_debits_minor"],
        row["pending_credits_minor"], MappingProxyType(holds), row["version"],
    )


def _row_values(state: AccountState) -> tuple[Any, ...]:
    holds = {
        hold.hold_id: {"side": hold.side.value, "amount_minor": hold.amount_minor,
                       "transfer_id": hold.transfer_id, "kind": hold.kind.value}
        for hold in state.open_holds.values()
    }
    return (
        state.account_id, state.owner, state.currency, state.overdraft_limit_minor,
        state.status.value, state.posted_minor, state.pending_debits_minor,
        state.pending_credits_minor, orjson.dumps(holds).decode(), state.version,
    )


def _movement(event: RecordedEvent) -> tuple[int, str, str | None, str | None, str] | None:
    data = event.data
    if event.event_type == "Deposited":
        reference = data.get("reference")
        return data["amount_minor"], EntryKind.DEPOSIT, None, reference, data["entry_id"]
    if event.event_type == "Withdrawn":
        reference = data.get("reference")
        return -data["amount_minor"], EntryKind.WITHDRAWAL, None, reference, data["entry_id"]
    if event.event_type == "HoldPosted":
        sign = -1 if data["side"] == HoldSide.DEBIT else 1
        return sign * data["amount_minor"], data["kind"], data["transfer_id"], None, data["hold_id"]
    return None
