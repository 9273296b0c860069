"""The account service's `holds` read model, inline (written in the append's transaction).

Every hold id ever placed or cancelled and how it stands (open, posted, voided, cancelled),
so the saga commands know how a hold that is no longer open ended: the account's state
keeps only its open holds, to stay bounded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final

from account_service.contracts import HoldCancelled, HoldPlaced, HoldPosted, HoldVoided
from account_service.domain import HoldStatus
from account_service.events import account_id_of, from_recorded
from eventstore import Projection, RecordedEvent, unnest_columns, unnest_placeholders
from eventstore._db import Connection

_HOLD_COLUMNS: Final = "hold_id, account_id, side, amount_minor, transfer_id, status, updated_at"
_HOLD_TYPES: Final = "text[], text[], text[], bigint[], text[], text[], timestamptz[]"


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

    async def apply_batch(
        self, connection: Connection, table: str, events: Sequence[RecordedEvent]
    ) -> None:
        """Fold a page of hold events as `apply` would, in two statements at most: one
        update of the holds placed before the page that end in it, then one insert of the
        holds placed or cancelled in it (with how they stand at its end).

        The update goes first so that it cannot see a hold placed later in the page: an end
        that came before its hold's placement fails, as it does event by event.
        """
        started, ends = _fold_holds(events)
        if ends:
            result = await connection.execute(
                f"update {table} as h set status = u.status, updated_at = u.updated_at"
                " from unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])"
                "   as u(hold_id, account_id, status, updated_at)"
                " where h.hold_id = u.hold_id and h.account_id = u.account_id"
                " and h.status = 'open'",
                *unnest_columns([end.values() for end in ends]),
            )
            assert result == f"UPDATE {len(ends)}", "a hold ends once, and only after it was placed"
        if started:
            # No "on conflict", as in `_insert_hold`: a second placement is refused loudly.
            await connection.execute(
                f"insert into {table} ({_HOLD_COLUMNS})"
                f" select * from unnest({unnest_placeholders(_HOLD_TYPES)})",
                *unnest_columns([hold.values() for hold in started]),
            )


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


@dataclass(frozen=True, slots=True)
class _StartedHold:
    """A holds row inserted by a page: placed or cancelled, and maybe ended in the page."""

    hold_id: str
    account_id: str
    side: str
    amount_minor: int | None
    transfer_id: str
    status: HoldStatus
    updated_at: datetime

    def values(self) -> tuple[Any, ...]:
        """The row's columns, in _HOLD_COLUMNS order."""
        return (self.hold_id, self.account_id, self.side, self.amount_minor, self.transfer_id,
                self.status.value, self.updated_at)  # fmt: skip


@dataclass(frozen=True, slots=True)
class _HoldEnd:
    """A hold placed before the page that ends in it."""

    hold_id: str
    account_id: str
    status: HoldStatus
    updated_at: datetime

    def values(self) -> tuple[Any, ...]:
        """The update's columns: hold id, account id, status, updated_at."""
        return (self.hold_id, self.account_id, self.status.value, self.updated_at)


def _fold_holds(events: Sequence[RecordedEvent]) -> tuple[list[_StartedHold], list[_HoldEnd]]:
    """The holds a page inserts (as they stand at its end) and the ones it ends."""
    started: list[_StartedHold] = []
    index_of: dict[str, int] = {}
    ends: dict[str, _HoldEnd] = {}
    for event in events:
        if not event.stream_id.startswith("account-") or not event.event_type.startswith("Hold"):
            continue
        account_id = account_id_of(event.stream_id)
        match from_recorded(event):
            case HoldPlaced() | HoldCancelled() as begun:
                index_of.setdefault(begun.hold_id, len(started))
                started.append(_started_hold(account_id, begun, event.recorded_at))
            case HoldPosted() | HoldVoided() as ended:
                status = HoldStatus.POSTED if isinstance(ended, HoldPosted) else HoldStatus.VOIDED
                index = index_of.get(ended.hold_id)
                if index is None:
                    assert ended.hold_id not in ends, "a hold ends once"
                    ends[ended.hold_id] = _HoldEnd(ended.hold_id, account_id, status,
                                                   event.recorded_at)  # fmt: skip
                    continue
                hold = started[index]
                assert hold.account_id == account_id, "a hold ends on the account it was placed"
                assert hold.status is HoldStatus.OPEN, "a hold ends once, after it was placed"
                started[index] = replace(hold, status=status, updated_at=event.recorded_at)
    return started, list(ends.values())


def _started_hold(
    account_id: str, begun: HoldPlaced | HoldCancelled, recorded_at: datetime
) -> _StartedHold:
    """The row `_insert_hold` would insert."""
    if isinstance(begun, HoldPlaced):
        amount_minor: int | None = begun.amount_minor
        status = HoldStatus.OPEN
    else:
        amount_minor, status = None, HoldStatus.CANCELLED
    return _StartedHold(begun.hold_id, account_id, begun.side.value, amount_minor,
                        begun.transfer_id, status, recorded_at)  # fmt: skip
