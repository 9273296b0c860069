"""The saga's steps of each transfer and trade, kept from the saga's events over JetStream.

The trade service never reads the saga's schema: a durable consumer of the saga's log
(`ledger.saga.saga.<EventType>`, stream `saga-<transfer id>`) records each event as a step
in `<schema>.settlement_steps`, keyed by the saga stream's version, so a redelivered event
changes nothing (the consumer's inbox makes each message apply once besides). Events of
sagas whose transfer this schema does not hold are skipped: several ledgers may share one
NATS server, and a saga only starts after its transfer's request was committed.

    await ensure_table(store)
    consumer = steps_consumer(nc, store, ConsumerOptions.from_settings(settings))
    steps = await step_rows(store.pool, store.schema, transfer_id)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from nats.aio.client import Client

from eventstore import EventStore, unnest_columns
from eventstore._db import Connection, Executor
from ledger.bus import EVENTS_SUBJECT_PREFIX
from ledger.consumers import (
    ConsumedEvent,
    ConsumerBatchHandler,
    ConsumerHandler,
    ConsumerOptions,
    DurableConsumer,
)
from saga.contracts import CATEGORY as SAGA_CATEGORY
from saga.contracts import EVENT_TYPES as SAGA_EVENT_TYPES
from trade_service.projections import TABLE as SETTLEMENTS
from trade_service.views import RETRIED

TABLE: Final = "settlement_steps"
SAGA_SUBJECTS: Final = f"{EVENTS_SUBJECT_PREFIX}.saga.>"
"""Everything the saga service publishes: one wildcard, since NATS before 2.10 ignores a
consumer's several filter subjects (and delivers the whole stream)."""
SAGA_STREAM_PREFIX: Final = f"{SAGA_CATEGORY}-"
MAX_DETAIL_CHARS: Final = 1000
MAX_STEPS_SHOWN: Final = 1_000
"""Steps read for one answer (a saga's retries are bounded, so this is never reached)."""
WHOLE_SAGA: Final = "saga"
"""The step name of events about the saga as a whole (started, compensating, ended)."""

_OUTCOME_BY_TYPE: Final = {
    "SagaStarted": "started",
    "StepStarted": "started",
    "StepSucceeded": "succeeded",
    "StepRefused": "refused",
    "StepFailed": "failed",
    "SagaCompensating": "compensating",
    "SagaCompleted": "completed",
    "SagaRejected": "rejected",
    "SagaFailed": "failed",
    "SagaParked": "parked",
    "SagaRetried": RETRIED,
}
assert set(_OUTCOME_BY_TYPE) <= set(SAGA_EVENT_TYPES), "steps follow the saga's contract"


async def ensure_table(store: EventStore) -> None:
    """Create `<schema>.settlement_steps` if it does not exist; safe from many processes."""
    async with store.pool.acquire() as connection, connection.transaction():
        await connection.execute(
            "select pg_advisory_xact_lock(hashtext($1), hashtext($2))", store.schema, TABLE
        )
        await connection.execute(
            f"""
            create table if not exists {store.schema}.{TABLE} (
                transfer_id text not null,
                seq bigint not null,
                step text not null,
                outcome text not null,
                at timestamptz not null,
                detail text,
                primary key (transfer_id, seq)
            )
            """
        )


def steps_consumer(
    nc: Client, store: EventStore, options: ConsumerOptions, *, durable_name: str
) -> DurableConsumer:
    """The durable consumer that keeps `settlement_steps`; call `ensure_table` first."""
    return DurableConsumer(nc, store, durable_name, SAGA_SUBJECTS, _handler(store.schema),
                           options, handle_all=_batch_handler(store.schema))  # fmt: skip


def _handler(schema: str) -> ConsumerHandler:
    async def apply(connection: Connection, event: ConsumedEvent) -> None:
        await record_step(connection, schema, event)

    return apply


def _batch_handler(schema: str) -> ConsumerBatchHandler:
    async def apply_all(connection: Connection, events: Sequence[ConsumedEvent]) -> None:
        await record_steps(connection, schema, events)

    return apply_all


def step_of(event: ConsumedEvent) -> tuple[str, str, str | None] | None:
    """(step, outcome, detail) of a saga event; None for an event that is no step."""
    outcome = _OUTCOME_BY_TYPE.get(event.event_type)
    if outcome is None or not event.stream_id.startswith(SAGA_STREAM_PREFIX):
        return None
    data = event.data
    step = str(data.get("step") or WHOLE_SAGA)
    if event.event_type == "StepStarted":
        kind = "compensation" if data.get("is_compensation") else "attempt"
        detail: str | None = f"{kind} {data.get('attempt')}"
    elif event.event_type == "StepRefused":
        detail = ": ".join(str(part) for part in (data.get("code"), data.get("detail")) if part)
    elif event.event_type in ("StepFailed", "SagaParked"):
        detail = str(data.get("error"))
    elif event.event_type == "SagaRetried":
        detail = f"by {data.get('by')}"
    else:
        reason, extra = data.get("reason"), data.get("detail")
        detail = ": ".join(str(part) for part in (reason, extra) if part) or None
    return step, outcome, detail[:MAX_DETAIL_CHARS] if detail else None


async def record_step(connection: Connection, schema: str, event: ConsumedEvent) -> None:
    """Record the saga event as a step of its transfer, once per saga stream version, if
    this schema holds that transfer."""
    step = step_of(event)
    if step is None:
        return
    transfer_id = event.stream_id.removeprefix(SAGA_STREAM_PREFIX)
    name, outcome, detail = step
    await connection.execute(
        f"insert into {schema}.{TABLE} (transfer_id, seq, step, outcome, at, detail)"
        f" select $1, $2, $3, $4, $5, $6 where exists"
        f" (select 1 from {schema}.{SETTLEMENTS} where transfer_id = $1)"
        " on conflict (transfer_id, seq) do nothing",
        transfer_id, event.stream_version, name, outcome, event.recorded_at, detail,
    )


async def record_steps(
    connection: Connection, schema: str, events: Sequence[ConsumedEvent]
) -> None:
    """`record_step` of many events in one statement."""
    rows = []
    for event in events:
        step = step_of(event)
        if step is not None:
            name, outcome, detail = step
            rows.append((event.stream_id.removeprefix(SAGA_STREAM_PREFIX), event.stream_version,
                         name, outcome, event.recorded_at, detail))  # fmt: skip
    if not rows:
        return
    await connection.execute(
        f"insert into {schema}.{TABLE} (transfer_id, seq, step, outcome, at, detail)"
        " select u.* from unnest($1::text[], $2::bigint[], $3::text[], $4::text[],"
        " $5::timestamptz[], $6::text[]) as u(transfer_id, seq, step, outcome, at, detail)"
        f" where exists (select 1 from {schema}.{SETTLEMENTS} s"
        " where s.transfer_id = u.transfer_id)"
        " on conflict (transfer_id, seq) do nothing",
        *unnest_columns(rows),
    )


async def step_rows(executor: Executor, schema: str, transfer_id: str) -> list[Any]:
    """The steps recorded for a transfer or trade, in the saga's order."""
    return await executor.fetch(
        f"select seq, step, outcome, at, detail from {schema}.{TABLE}"
        " where transfer_id = $1 order by seq limit $2",
        transfer_id, MAX_STEPS_SHOWN,
    )
