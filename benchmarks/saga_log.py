"""The saga log's writes: one transaction per record against the group commit, in one run.

    python benchmarks/saga_log.py [--dsn DSN] [--sagas 64] [--seconds S] [--think-ms MS]

`--sagas` sagas, started and leased to one orchestrator in a fresh schema `bench_<random>`
(dropped at the end), each record one step's event at a time, as a worker does:

  (a) one_per_transaction: what each record cost before the group commit (and what a lone
      record still costs): its own transaction with the lease renewal, `append_events` and
      the `saga_runs` update;
  (b) group_commit: the orchestrator's `SagaRecorder`, which writes the records that queue
      up while a transaction is in flight together in the next one.

Between two records of one saga, each worker waits `--think-ms` (the command's round trip
to its participant; 0 measures the log alone). Each phase is warmed up for `--warmup`
seconds before it is timed for `--seconds`. Printed per phase: records/s, the CPU of this
process and of the PostgreSQL backends per record (local servers only), and records per
commit. The DSN comes from `--dsn`, else LEDGER_BENCH_DATABASE_URL, else an embedded
PostgreSQL is started in a temporary directory (needs the `embedded` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import asyncpg
from eventstore_append import backend_pids, on_postgres, server_cpu_seconds

from eventstore import NO_STREAM, EventStore
from ledger import metrics
from saga import log, runs
from saga.contracts import SagaStarted, StepStarted, StepSucceeded, stream_of
from saga.definition import SETTLE_LEGS
from saga.recorder import SagaRecorder
from saga.runs import SagaRunsProjection
from saga.state import SagaState, started
from trade_service.contracts import SettlementLeg

DSN_ENV: Final = "LEDGER_BENCH_DATABASE_URL"
OWNER: Final = "orchestrator-bench"
LEASE_S: Final = 3600.0
METADATA: Final = {"correlation_id": str(uuid.uuid4()), "actor": "bench"}

Record = Callable[[SagaState, tuple[StepStarted | StepSucceeded, ...]], Awaitable[SagaState]]


@dataclass(frozen=True)
class Figure:
    records: int
    commits: int
    """Transactions that wrote the records."""
    seconds: float
    client_cpu_s: float
    server_cpu_s: float | None

    def line(self, name: str) -> str:
        per_record_ms = 1000 / self.records if self.records else 0.0
        server = (f", postgres {self.server_cpu_s * per_record_ms:.2f} ms"
                  if self.server_cpu_s is not None else "")  # fmt: skip
        return (
            f"{name}: {self.records / self.seconds:,.0f} records/s"
            f"  (cpu per record: this process {self.client_cpu_s * per_record_ms:.2f} ms"
            f"{server}; {self.records / max(self.commits, 1):.1f} records per commit)"
        )


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def lease_until() -> datetime:
    return datetime.now(UTC) + timedelta(seconds=LEASE_S)


async def leased_sagas(store: EventStore, count: int) -> list[SagaState]:
    """`count` started sagas, every one leased to OWNER."""
    leg = SettlementLeg(leg_id="leg-1", from_account="a", to_account="b", amount_minor=100,
                        currency="USD")  # fmt: skip
    states = []
    for _ in range(count):
        event = SagaStarted(saga_id=str(uuid.uuid4()), kind="transfer", legs=(leg,),
                            deadline_at=lease_until())  # fmt: skip
        async with store.unit_of_work() as unit:
            await unit.append(stream_of(event.saga_id), log.new_events((event,), METADATA),
                              NO_STREAM)  # fmt: skip
        states.append(started(event))
    due_by = datetime.now(UTC) + timedelta(seconds=1)
    claimed = await runs.claim_due(store.pool, store.schema, OWNER, due_by, LEASE_S, count)
    assert len(claimed) == count, "every saga is leased"
    return states


def step_events(version: int) -> tuple[StepStarted | StepSucceeded, ...]:
    """A worker's records alternate: a command about to be sent (after SagaStarted, at
    version 1), then its reply."""
    if version % 2 == 1:
        return (StepStarted(step="reserve", command_id=uuid.uuid4(), attempt=1,
                            is_compensation=False),)  # fmt: skip
    reply = {"legs": [{"leg_id": "leg-1", "debit_hold": str(uuid.uuid4())}]}
    return (StepSucceeded(step="reserve", reply=reply),)


def one_per_transaction(store: EventStore) -> Record:
    """A record in its own transaction, with its lease renewal (the path before the group
    commit)."""

    async def record(
        state: SagaState, events: tuple[StepStarted | StepSucceeded, ...]
    ) -> SagaState:
        async with store.unit_of_work() as unit:
            held = await runs.renew_lease(unit.connection, store.schema, state.saga_id, OWNER,
                                         lease_until())  # fmt: skip
            assert held, "the lease is held"
            return await log.record(unit, SETTLE_LEGS, state, log.entries(events, METADATA))

    return record


def group_commit(recorder: SagaRecorder) -> Record:
    async def record(
        state: SagaState, events: tuple[StepStarted | StepSucceeded, ...]
    ) -> SagaState:
        return await recorder.record(state, log.entries(events, METADATA), is_leased=True)

    return record


def group_commits() -> float:
    """Transactions the recorders of this process committed so far (its metric)."""
    return metrics.REGISTRY.get_sample_value("ledger_saga_records_per_commit_count") or 0.0


async def phase(
    pool: asyncpg.Pool,
    states: list[SagaState],
    record: Record,
    args: argparse.Namespace,
    *,
    is_grouped: bool,
) -> tuple[Figure, list[SagaState]]:
    """Every saga records in a loop: warmed up, then timed."""
    think_s = args.think_ms / 1000
    current = list(states)
    pids = await backend_pids(pool)

    async def worker(index: int, until: float) -> int:
        done = 0
        while time.perf_counter() < until:
            current[index] = await record(current[index], step_events(current[index].version))
            done += 1
            if think_s:
                await asyncio.sleep(think_s)
        return done

    async def run(seconds: float) -> int:
        until = time.perf_counter() + seconds
        return sum(await asyncio.gather(*(worker(i, until) for i in range(len(current)))))

    await run(args.warmup)
    commits_before, server_before = group_commits(), server_cpu_seconds(pids)
    client_before, started_s = time.process_time(), time.perf_counter()
    records = await run(args.seconds)
    elapsed = time.perf_counter() - started_s
    client_cpu = time.process_time() - client_before
    server_after = server_cpu_seconds(pids)
    committed = int(group_commits() - commits_before) if is_grouped else records
    server_cpu = (server_after - server_before
                  if server_before is not None and server_after is not None else None)  # fmt: skip
    return Figure(records, committed, elapsed, client_cpu, server_cpu), current


async def benchmark(args: argparse.Namespace, dsn: str) -> dict[str, Figure]:
    schema = f"bench_{secrets.token_hex(4)}"
    pool = await asyncpg.create_pool(dsn, min_size=10, max_size=10)
    try:
        store = EventStore(pool, schema, inline_projections=(SagaRunsProjection(),))
        await store.migrate()
        await SagaRunsProjection().ensure_table(store)
        figures = {}
        progress(f"{args.sagas} sagas in {schema}; one_per_transaction")
        states = await leased_sagas(store, args.sagas)
        figures["one_per_transaction"], states = await phase(
            pool, states, one_per_transaction(store), args, is_grouped=False
        )
        progress("group_commit")
        recorder = SagaRecorder(store, SETTLE_LEGS, OWNER, lease_until)
        try:
            figures["group_commit"], _ = await phase(
                pool, states, group_commit(recorder), args, is_grouped=True
            )
        finally:
            await recorder.close()
        return figures
    finally:
        await pool.execute(f"drop schema if exists {schema} cascade")
        await pool.close()


def report(figures: dict[str, Figure]) -> None:
    for name, figure in figures.items():
        print(figure.line(name))
    before, after = figures["one_per_transaction"], figures["group_commit"]
    print(f"ratio_group_commit/one_per_transaction: records/s "
          f"{(after.records / after.seconds) / (before.records / before.seconds):.2f},"
          f" cpu of this process per record "
          f"{(after.client_cpu_s / after.records) / (before.client_cpu_s / before.records):.2f}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dsn", default=os.environ.get(DSN_ENV), help=f"default: ${DSN_ENV}")
    parser.add_argument("--sagas", type=int, default=64, help="sagas recording at once")
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per phase")
    parser.add_argument("--warmup", type=float, default=1.0, help="untimed seconds per phase")
    parser.add_argument("--think-ms", type=float, default=2.0,
                        help="each saga's pause between records (its command's round trip)")
    args = parser.parse_args(argv)
    if args.sagas < 1 or args.seconds <= 0 or args.warmup < 0 or args.think_ms < 0:
        parser.error("--sagas must be >= 1, --seconds > 0, --warmup and --think-ms >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report(on_postgres(args.dsn, lambda dsn: benchmark(args, dsn)))


if __name__ == "__main__":
    main()
