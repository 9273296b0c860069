"""The account service's read models, all inline (written in the append's transaction).

`balances`: one row per account with everything the aggregate needs, so a command loads an
account with one row read instead of replaying its stream. `entries`: every posted movement
with its running balance, for history and statements. The third, `holds`, is in
`account_service/holds.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final, cast

import orjson

from account_service.contracts import (
    EntryKind,
    HoldSide,
    MovementKind,
)
from account_service.domain import AccountState, Hold, Status, evolve
from account_service.events import account_id_of, from_recorded
from eventstore import Projection, RecordedEvent, unnest_columns, unnest_placeholders
from eventstore._db import Connection

BALANCE_COLUMNS = (
    "account_id, owner, currency, overdraft_limit_minor, status, posted_minor,"
    " pending_debits_minor, pending_credits_minor, open_holds, version, opened_at, updated_at"
)
_BALANCE_TYPES: Final = (
    "text[], text[], text[], bigint[], text[], bigint[], bigint[], bigint[], jsonb[], bigint[],"
    " timestamptz[], timestamptz[]"
)
_ENTRY_COLUMNS: Final = (
    "global_position, account_id, entry_id, kind, amount_minor, balance_after_minor,"
    " transfer_id, reference, recorded_at"
)
_ENTRY_TYPES: Final = (
    "bigint[], text[], text[], text[], bigint[], bigint[], text[], text[], timestamptz[]"
)
_BALANCE_UPSERT: Final = (
    "on conflict (account_id) do update set status = excluded.status,"
    " posted_minor = excluded.posted_minor,"
    " pending_debits_minor = excluded.pending_debits_minor,"
    " pending_credits_minor = excluded.pending_credits_minor,"
    " open_holds = excluded.open_holds, version = excluded.version,"
    " updated_at = excluded.updated_at"
)
"""What an upsert of a balances row changes of a row already there (never its opened_at)."""


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
            f" ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11, $11) {_BALANCE_UPSERT}",
            *_row_values(state), event.recorded_at,
        )

    async def apply_batch(
        self, connection: Connection, table: str, events: Sequence[RecordedEvent]
    ) -> None:
        """Fold a page of events as `apply` would, in two statements: one read of the rows
        of every account in the page, one upsert of their folded rows."""
        by_account: dict[str, list[RecordedEvent]] = {}
        for event in events:
            if event.stream_id.startswith("account-"):
                by_account.setdefault(account_id_of(event.stream_id), []).append(event)
        if not by_account:
            return
        rows = await connection.fetch(
            f"select {BALANCE_COLUMNS} from {table} where account_id = any($1::text[])",
            list(by_account),
        )
        stored = {row["account_id"]: row for row in rows}
        folded = [_fold_balance(stored.get(account_id), its_events)
                  for account_id, its_events in by_account.items()]  # fmt: skip
        await connection.execute(
            f"insert into {table} ({BALANCE_COLUMNS})"
            f" select * from unnest({unnest_placeholders(_BALANCE_TYPES)}) {_BALANCE_UPSERT}",
            *unnest_columns([row.values() for row in folded]),
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

    async def apply_batch(
        self, connection: Connection, table: str, events: Sequence[RecordedEvent]
    ) -> None:
        """Record a page's movements as `apply` would, in two statements: one read of the
        last balance of every account moved in the page, one insert of all the entries."""
        movements = [(event, movement) for event in events
                     if (movement := _movement(event)) is not None]  # fmt: skip
        if not movements:
            return
        rows = await connection.fetch(
            f"select distinct on (account_id) account_id, global_position, balance_after_minor"
            f" from {table} where account_id = any($1::text[])"
            " order by account_id, global_position desc",
            list({account_id_of(event.stream_id) for event, _ in movements}),
        )
        last = {row["account_id"]: (row["global_position"], row["balance_after_minor"])
                for row in rows}  # fmt: skip
        entries = _entries(last, movements)
        await connection.execute(
            f"insert into {table} ({_ENTRY_COLUMNS})"
            f" select * from unnest({unnest_placeholders(_ENTRY_TYPES)})",
            *unnest_columns(entries),
        )


@dataclass(frozen=True, slots=True)
class _FoldedBalance:
    """An account's balances row after a page of its events."""

    state: AccountState
    opened_at: datetime
    updated_at: datetime

    def values(self) -> tuple[Any, ...]:
        """The row's columns, in BALANCE_COLUMNS order."""
        return (*_row_values(self.state), self.opened_at, self.updated_at)


def _fold_balance(row: Any, events: Sequence[RecordedEvent]) -> _FoldedBalance:
    """The fold of one account's events of a page onto its stored row (None: no row yet)."""
    state = state_from_row(row) if row is not None else None
    # An upsert keeps the opened_at of a row already there; a new row's is its first event's.
    opened_at = row["opened_at"] if row is not None else events[0].recorded_at
    for event in events:
        state = evolve(state, from_recorded(event))
        assert state.version == event.stream_version, "balances row skipped an event"
    assert state is not None, "a page holds at least one event of each of its accounts"
    return _FoldedBalance(state, opened_at, events[-1].recorded_at)


_Movement = tuple[int, str, str | None, str | None, str]
"""An entry's amount (signed), kind, transfer id, reference and entry id."""


def _entries(
    stored: dict[str, tuple[int, int]], movements: Sequence[tuple[RecordedEvent, _Movement]]
) -> list[tuple[Any, ...]]:
    """The entries rows of `movements`, in commit order, each account's running balance
    going on from its last stored (position, balance)."""
    last = dict(stored)
    rows = []
    for event, (amount_minor, kind, transfer_id, reference, entry_id) in movements:
        account_id = account_id_of(event.stream_id)
        position, previous = last.get(account_id, (0, 0))
        # `apply` reads the row of the highest position: the one just before only because a
        # stream's events come in increasing positions.
        assert event.global_position > position, "an account's entries come in position order"
        balance_after_minor = previous + amount_minor
        last[account_id] = (event.global_position, balance_after_minor)
        rows.append((event.global_position, account_id, entry_id, kind, amount_minor,
                     balance_after_minor, transfer_id, reference, event.recorded_at))  # fmt: skip
    return rows


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


def _movement(event: RecordedEvent) -> _Movement | None:
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
