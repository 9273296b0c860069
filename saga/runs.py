"""`saga_runs`, the saga log's inline index, and the leases workers take on it.

`saga_runs` is the projection of every saga stream that workers query: status, when the
saga is next due, and the lease of the orchestrator advancing it. The projection writes
the status columns in each append's transaction; only the lease functions below take or
renew a lease, each in one short statement (never a transaction held across a request).
The projection itself only ends leases: a saga that stops (final or parked) has none left,
in the same transaction, so a worker killed before its release holds no lease on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from eventstore import Projection, RecordedEvent
from eventstore._db import Connection, Executor
from saga.contracts import CATEGORY, SagaStatus

RUNS_TABLE: Final = "saga_runs"
_ACTIVE = (SagaStatus.RUNNING.value, SagaStatus.COMPENSATING.value)
_NO_LEASE: Final = {"lease_owner": None, "lease_until": None}
"""A saga that stops holds no lease, as its rebuild (which knows nothing of leases) has none."""
_STATUS_OF_EVENT: Final = {
    "SagaCompensating": SagaStatus.COMPENSATING,
    "SagaCompleted": SagaStatus.COMPLETED,
    "SagaRejected": SagaStatus.REJECTED,
    "SagaFailed": SagaStatus.FAILED,
}


class SagaRunsProjection(Projection):
    """One row per saga: its status, when it is next due, and the lease on it."""

    name = RUNS_TABLE
    table = RUNS_TABLE
    key_columns = ("saga_id",)

    def create_sql(self, table: str) -> str:
        """The runs table, indexed for the workers' claim and the API's status listing."""
        return f"""
            create table {table} (
                saga_id text primary key,
                kind text not null,
                status text not null,
                parked_from text,
                version bigint not null,
                next_attempt_at timestamptz,
                reason text,
                last_error text,
                started_at timestamptz not null,
                updated_at timestamptz not null,
                lease_owner text,
                lease_until timestamptz
            );
            create index on {table} (next_attempt_at)
                where status in ('running', 'compensating');
            create index on {table} (status, saga_id);
        """

    async def apply(self, connection: Connection, table: str, event: RecordedEvent) -> None:
        """Fold one saga event into its saga's row."""
        if event.category != CATEGORY:
            return
        saga_id = event.stream_id[len(CATEGORY) + 1 :]
        if event.event_type == "SagaStarted":
            await connection.execute(
                f"insert into {table} (saga_id, kind, status, version, next_attempt_at,"
                " started_at, updated_at) values ($1, $2, 'running', $3, $4, $4, $4)",
                saga_id, event.data["kind"], event.stream_version, event.recorded_at,
            )  # fmt: skip
            return
        await _update_row(connection, table, saga_id, event)

    async def apply_batch(
        self, connection: Connection, table: str, events: Sequence[RecordedEvent]
    ) -> None:
        """Fold a page of events as `apply` would, with one update for every saga whose
        events here only set columns (a group commit of the orchestrator, a rebuild's page)
        and one insert for every saga whose only event here is its start (a batch of the
        starter); a saga started with more events here, or parked or retried (columns
        copied from the row), goes event by event."""
        by_saga: dict[str, list[RecordedEvent]] = {}
        for event in events:
            if event.category == CATEGORY:
                by_saga.setdefault(event.stream_id[len(CATEGORY) + 1 :], []).append(event)
        folded, started = [], []
        for saga_id, its_events in by_saga.items():
            if len(its_events) == 1 and its_events[0].event_type == "SagaStarted":
                started.append((saga_id, its_events[0]))
            elif any(event.event_type in _ROW_BY_ROW for event in its_events):
                for event in its_events:
                    await self.apply(connection, table, event)
            else:
                folded.append(_FoldedRow.of(saga_id, its_events))
        if started:
            await _insert_rows(connection, table, started)
        if folded:
            await _update_rows(connection, table, folded)


_ROW_BY_ROW: Final = frozenset({"SagaStarted", "SagaParked", "SagaRetried"})
"""Saga events that `apply_batch` does not fold: an insert, or a column copied from the row."""


@dataclass(frozen=True, slots=True)
class _FoldedRow:
    """A saga's consecutive events folded into the one update they add up to."""

    saga_id: str
    prior_version: int
    version: int
    updated_at: datetime
    changes: dict[str, Any]

    @classmethod
    def of(cls, saga_id: str, events: Sequence[RecordedEvent]) -> _FoldedRow:
        """The fold of `events`, one saga's consecutive events, none of `_ROW_BY_ROW`."""
        first, last = events[0], events[-1]
        versions = [event.stream_version for event in events]
        assert versions == list(range(first.stream_version, last.stream_version + 1)), versions
        changes: dict[str, Any] = {}
        for event in events:
            changes.update(_changes(event))
        assert not any(isinstance(value, _Column) for value in changes.values()), "foldable"
        return cls(saga_id, first.stream_version - 1, last.stream_version, last.recorded_at,
                   changes)  # fmt: skip


async def _insert_rows(
    connection: Connection, table: str, started: Sequence[tuple[str, RecordedEvent]]
) -> None:
    """The rows of sagas that just started (`apply`'s insert for many, in one statement)."""
    await connection.execute(
        f"insert into {table} (saga_id, kind, status, version, next_attempt_at, started_at,"
        " updated_at) select u.saga_id, u.kind, 'running', u.version, u.at, u.at, u.at"
        " from unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[])"
        " as u(saga_id, kind, version, at)",
        [saga_id for saga_id, _ in started], [event.data["kind"] for _, event in started],
        [event.stream_version for _, event in started],
        [event.recorded_at for _, event in started],
    )  # fmt: skip


async def _update_rows(connection: Connection, table: str, rows: Sequence[_FoldedRow]) -> None:
    """Update many sagas' rows in one statement; each must be at its prior version."""
    done = await connection.execute(
        f"update {table} as r set version = u.version, updated_at = u.updated_at,"
        " next_attempt_at = u.next_attempt_at, status = coalesce(u.status, r.status),"
        " reason = case when u.sets_reason then u.reason else r.reason end,"
        " last_error = case when u.sets_error then u.last_error else r.last_error end,"
        " lease_owner = case when u.ends_lease then null else r.lease_owner end,"
        " lease_until = case when u.ends_lease then null else r.lease_until end"
        " from unnest($1::text[], $2::bigint[], $3::bigint[], $4::timestamptz[],"
        "   $5::timestamptz[], $6::text[], $7::bool[], $8::text[], $9::bool[], $10::text[],"
        "   $11::bool[])"
        " as u(saga_id, prior_version, version, updated_at, next_attempt_at, status,"
        "   sets_reason, reason, sets_error, last_error, ends_lease)"
        " where r.saga_id = u.saga_id and r.version = u.prior_version",
        [row.saga_id for row in rows], [row.prior_version for row in rows],
        [row.version for row in rows], [row.updated_at for row in rows],
        [row.changes["next_attempt_at"] for row in rows],
        [row.changes.get("status") for row in rows],
        ["reason" in row.changes for row in rows], [row.changes.get("reason") for row in rows],
        ["last_error" in row.changes for row in rows],
        [row.changes.get("last_error") for row in rows],
        ["lease_owner" in row.changes for row in rows],
    )  # fmt: skip
    assert done == f"UPDATE {len(rows)}", f"saga_runs rows skipped an event: {done}"


def _changes(event: RecordedEvent) -> dict[str, Any]:
    """The columns `event` changes besides version and updated_at."""
    data = event.data
    # `last_error` follows `saga.state`'s fold, so the list shows what the saga's view shows.
    match event.event_type:
        case "StepSucceeded":
            return {"next_attempt_at": event.recorded_at, "last_error": None}
        case "StepRefused":
            return {"next_attempt_at": event.recorded_at,
                    "last_error": f"refused: {data['code']}"}  # fmt: skip
        case "StepFailed":
            return {"next_attempt_at": datetime.fromisoformat(data["retry_at"]),
                    "last_error": data["error"]}  # fmt: skip
        case "SagaParked":
            return {"status": SagaStatus.REQUIRES_INTERVENTION.value, "next_attempt_at": None,
                    "last_error": data["error"], "parked_from": _CURRENT_STATUS,
                    **_NO_LEASE}  # fmt: skip
        case "SagaRetried":
            return {"status": _PARKED_FROM, "parked_from": None,
                    "next_attempt_at": event.recorded_at}  # fmt: skip
        case "SagaCompensating":
            return {"status": SagaStatus.COMPENSATING.value, "reason": data["reason"],
                    "next_attempt_at": event.recorded_at}  # fmt: skip
        case "SagaRejected" | "SagaFailed" | "SagaCompleted":
            return {"status": _STATUS_OF_EVENT[event.event_type].value,
                    "reason": data.get("reason"), "next_attempt_at": None,
                    **_NO_LEASE}  # fmt: skip
    return {"next_attempt_at": event.recorded_at}


class _Column:
    """A value that is another column of the row (the SQL copies it)."""

    def __init__(self, name: str) -> None:
        self.name = name


_CURRENT_STATUS: Final = _Column("status")
_PARKED_FROM: Final = _Column("parked_from")


def _set_clause(changes: dict[str, Any], first_index: int) -> tuple[str, list[Any]]:
    parts, values = [], []
    for name, value in changes.items():
        if isinstance(value, _Column):
            parts.append(f"{name} = {value.name}")
        else:
            values.append(value)
            parts.append(f"{name} = ${first_index + len(values) - 1}")
    return ", ".join(parts), values


async def _update_row(
    connection: Connection, table: str, saga_id: str, event: RecordedEvent
) -> None:
    clause, values = _set_clause(_changes(event), 4)
    done = await connection.execute(
        f"update {table} set version = $2, updated_at = $3, {clause}"
        " where saga_id = $1 and version = $2 - 1",
        saga_id, event.stream_version, event.recorded_at, *values,
    )  # fmt: skip
    assert done == "UPDATE 1", f"saga_runs row of {saga_id} skipped an event"


# --- leases -------------------------------------------------------------------------------


async def claim_due(
    executor: Executor, schema: str, owner: str, now: datetime, lease_s: float, limit: int
) -> list[str]:
    """Lease up to `limit` active sagas due at `now` to `owner`; the ids it now holds."""
    table = f"{schema}.{RUNS_TABLE}"
    rows = await executor.fetch(
        f"update {table} set lease_owner = $1, lease_until = $3"
        f" where saga_id in (select saga_id from {table}"
        "   where status = any($5::text[]) and next_attempt_at <= $2"
        "     and (lease_until is null or lease_until < $2)"
        "   order by next_attempt_at limit $4 for update skip locked)"
        " returning saga_id",
        owner, now, now + timedelta(seconds=lease_s), limit, list(_ACTIVE),
    )  # fmt: skip
    return [row["saga_id"] for row in rows]


async def renew_lease(
    executor: Executor, schema: str, saga_id: str, owner: str, until: datetime
) -> bool:
    """Extend `owner`'s lease on the saga to `until`; False when it holds it no longer."""
    return saga_id in await renew_leases(executor, schema, [saga_id], owner, until)


async def renew_leases(
    executor: Executor, schema: str, saga_ids: Sequence[str], owner: str, until: datetime
) -> set[str]:
    """Extend `owner`'s leases on the sagas to `until`; the ids it still holds."""
    rows = await executor.fetch(
        f"update {schema}.{RUNS_TABLE} set lease_until = $3"
        " where saga_id = any($1::text[]) and lease_owner = $2 returning saga_id",
        list(saga_ids), owner, until,
    )  # fmt: skip
    return {row["saga_id"] for row in rows}


async def release_lease(
    executor: Executor, schema: str, saga_id: str, owner: str, not_before: datetime | None
) -> None:
    """Give up `owner`'s lease; with `not_before`, no worker claims the saga before then."""
    await executor.execute(
        f"update {schema}.{RUNS_TABLE} set lease_owner = null, lease_until = $3"
        " where saga_id = $1 and lease_owner = $2",
        saga_id, owner, not_before,
    )  # fmt: skip


async def list_runs(
    executor: Executor, schema: str, status: SagaStatus | None, after: str | None, limit: int
) -> list[dict[str, Any]]:
    """Rows of `saga_runs` in saga id order, after the id `after`, of `status` if given."""
    rows = await executor.fetch(
        f"select saga_id, kind, status, reason, last_error, next_attempt_at, started_at,"
        f" updated_at from {schema}.{RUNS_TABLE}"
        " where ($1::text is null or status = $1) and ($2::text is null or saga_id > $2)"
        " order by saga_id limit $3",
        None if status is None else status.value, after, limit,
    )  # fmt: skip
    return [dict(row) for row in rows]
