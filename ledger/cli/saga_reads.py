"""What `ledger sagas` reads and writes, straight from the saga service's PostgreSQL schema:
`saga_runs` (the inline index of the saga log, saga/runs.py) and the saga streams.

No HTTP: an operator inspects and retries sagas while the services are down, too. The
retry appends through the saga log's own code path (`saga.log.retry_parked`, which the
HTTP route uses as well), with the `saga_runs` projection inline, exactly as the service
appends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from eventstore import EventStore
from ledger import context
from ledger.cli.connections import service_databases, where
from ledger.cli.failures import OperatorError
from ledger.settings import Settings
from saga import log
from saga.app import SagaService
from saga.contracts import CATEGORY, SagaStatus
from saga.definition import SETTLE_LEGS
from saga.runs import RUNS_TABLE, SagaRunsProjection
from saga.state import SagaState


@dataclass(frozen=True, slots=True)
class Run:
    """One saga as `ledger sagas list` shows it: its `saga_runs` row and its latest step."""

    saga_id: str
    kind: str
    status: SagaStatus
    step: str | None
    attempt: int | None
    is_compensation: bool
    reason: str | None
    last_error: str | None
    started_at: datetime
    updated_at: datetime


@asynccontextmanager
async def saga_store(settings: Settings) -> AsyncIterator[EventStore]:
    """The saga service's store, without migrating anything (a read must not create the
    schema). Raises OperatorError when PostgreSQL does not answer or holds no saga schema."""
    async with service_databases(settings, [SagaService()]) as (database,):
        table = f"{database.schema}.{RUNS_TABLE}"
        if await database.pool.fetchval("select to_regclass($1)", table) is None:
            raise OperatorError(f"no sagas in schema {database.schema!r} at"
                                f" {where(database.url)} (has the saga service run?)")  # fmt: skip
        store = EventStore(database.pool, database.schema,
                           inline_projections=(SagaRunsProjection(),))  # fmt: skip
        try:
            yield store
        finally:
            await store.announcer.close()  # the pool is closed by service_databases


async def recent_runs(store: EventStore, status: SagaStatus | None, limit: int) -> list[Run]:
    """Up to `limit` sagas (of `status` if given), the most recently changed first."""
    rows = await store.pool.fetch(
        f"""
        select r.saga_id, r.kind, r.status, r.reason, r.last_error, r.started_at,
               r.updated_at, s.step, s.attempt, s.is_compensation
        from {store.schema}.{RUNS_TABLE} r
        left join lateral (
            select e.data->>'step' as step, (e.data->>'attempt')::int as attempt,
                   (e.data->>'is_compensation')::boolean as is_compensation
            from {store.schema}.events e
            where e.stream_id = $1 || r.saga_id and e.event_type = 'StepStarted'
            order by e.stream_version desc limit 1
        ) s on true
        where ($2::text is null or r.status = $2)
        order by r.updated_at desc, r.saga_id
        limit $3
        """,
        f"{CATEGORY}-", None if status is None else status.value, limit,
    )  # fmt: skip
    return [_run(row) for row in rows]


def _run(row: asyncpg.Record) -> Run:
    return Run(
        saga_id=row["saga_id"], kind=row["kind"], status=SagaStatus(row["status"]),
        step=row["step"], attempt=row["attempt"], is_compensation=bool(row["is_compensation"]),
        reason=row["reason"], last_error=row["last_error"], started_at=row["started_at"],
        updated_at=row["updated_at"],
    )  # fmt: skip


async def counts_by_status(store: EventStore) -> dict[SagaStatus, int]:
    """How many sagas stand in each status (statuses with none are left out)."""
    rows = await store.pool.fetch(
        f"select status, count(*) as n from {store.schema}.{RUNS_TABLE} group by status"
    )
    return {SagaStatus(row["status"]): row["n"] for row in rows}


async def loaded(store: EventStore, saga_id: str) -> log.LoadedSaga:
    """The saga's whole log and its fold; raises StreamNotFound for an unknown saga."""
    return await log.load(store, SETTLE_LEGS, saga_id)


async def retry(store: EventStore, saga_id: str, by: str) -> SagaState:
    """The operator's retry of a parked saga, recorded as done by `by`.

    Raises StreamNotFound (unknown saga), saga.log.NotParked, ConcurrencyError."""
    metadata = context.new_context(actor=by).as_metadata()
    return await log.retry_parked(store, SETTLE_LEGS, saga_id, by, metadata)
