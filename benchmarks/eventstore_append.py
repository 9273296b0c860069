"""Event store throughput against a raw PostgreSQL insert baseline, measured in one run.

    python benchmarks/eventstore_append.py [--dsn DSN] [--seconds S] [--writers 16]

Phases, all against the same database and a fresh schema `bench_<random>` dropped at the end:

  (a) raw_insert: single-row autocommit INSERTs into a plain table with the columns of
      `<schema>.events`, one connection per writer, each writer on its own stream id;
  (b) append: `EventStore.append` of one event per call, exact expected version, writer i
      on stream `bench-i`;
  (c) append_batch100: the same with 100 events per append;
  (d) read_all: `EventStore.read_all` (decoding included) of everything from START, in pages
      of `--read-limit` events, each page following the last event's position.

Each phase is warmed up for `--warmup` seconds before it is timed for `--seconds`. The DSN
comes from `--dsn`, else LEDGER_BENCH_DATABASE_URL, else an embedded PostgreSQL is started
in a temporary directory (needs the `embedded` extra).

`--diagnose` adds phases that split the cost of an append (not part of the goals): the raw
insert into a table indexed like `events` (what the extra indexes cost the server), and
`append_events` called directly on held connections with pre-encoded arguments, one event
and `--batch` events per call (the database's share, without the EventStore's Python work
or pool round trips). Compare their client and server CPU per event with `append`'s.

Figures go to stdout, one per line, the ratio append/raw_insert last; progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import secrets
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import asyncpg
import orjson

from eventstore import START, EventStore, NewEvent, Position
from eventstore.hashing import canonical_json, event_body

T = TypeVar("T")
DSN_ENV: Final = "LEDGER_BENCH_DATABASE_URL"
EVENT_TYPE: Final = "FundsDeposited"
GOAL_RATIO: Final = 0.6
GOAL_BATCH_EVENTS_PER_S: Final = 40_000.0
GOAL_READ_ALL_EVENTS_PER_S: Final = 100_000.0
_PREV_HASH: Final = bytes(32)

RAW_TABLE_DDL: Final = """
create table {schema}.{table} (
    global_position bigint generated always as identity primary key,
    stream_id       text        not null,
    stream_version  bigint      not null,
    event_id        uuid        not null unique,
    event_type      text        not null,
    data            jsonb       not null,
    metadata        jsonb       not null,
    recorded_at     timestamptz not null,
    tx_id           xid8        not null default pg_current_xact_id(),
    hash            bytea       not null,
    prev_hash       bytea       not null
)
"""
# Only with --diagnose: what `events` carries beyond the plain table.
EVENTS_LIKE_EXTRA_DDL: Final = (
    "alter table {schema}.{table} add column category text not null"
    " generated always as (split_part(stream_id, '-', 1)) stored",
    "alter table {schema}.{table} add unique (stream_id, stream_version)",
    "create index on {schema}.{table} (tx_id, global_position)",
    "create index on {schema}.{table} (category, tx_id, global_position)",
)
RAW_INSERT: Final = (
    "insert into {schema}.{table} (stream_id, stream_version, event_id, event_type, data,"
    " metadata, recorded_at, hash, prev_hash) values ($1, $2, $3, $4, $5, $6, now(), $7, $8)"
)
DIRECT_APPEND: Final = (
    "select * from {schema}.append_events($1, $2, $3, $4, $5::jsonb[], $6::jsonb[], $7)"
)


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured phase; CPU seconds of this process and of its server backends (if local)."""

    events: int
    seconds: float
    client_cpu: float = 0.0
    server_cpu: float | None = None

    @property
    def per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def new_event(writer: int, sequence: int) -> NewEvent:
    """A realistic money event: integer minor units, ids, and tracing metadata."""
    return NewEvent(
        EVENT_TYPE,
        {
            "amount_minor": 12345 + sequence % 1000,
            "currency": "USD",
            "account_id": f"acc-{writer:04d}-{sequence % 97:04d}",
            "reference": f"dep-{writer}-{sequence}",
        },
        {
            "correlation_id": str(uuid.uuid4()),
            "causation_id": str(uuid.uuid4()),
            "actor": "bench",
        },
    )


# --------------------------------------------------------------------------- running phases

Step = Callable[[], Awaitable[int]]
"""One operation of a writer; returns how many events it wrote or read."""


async def gather_all(coroutines: list[Coroutine[Any, Any, int]]) -> list[int]:
    """Run them all; the first failure cancels the rest (no writer keeps a connection)."""
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(coroutine) for coroutine in coroutines]
    return [task.result() for task in tasks]


async def backend_pids(pool: asyncpg.Pool) -> list[int]:
    """The server process ids of every connection the pool may hand out."""
    async with AsyncExitStack() as stack:
        connections = await asyncio.gather(
            *(stack.enter_async_context(pool.acquire()) for _ in range(pool.get_max_size()))
        )
        return [int(await c.fetchval("select pg_backend_pid()")) for c in connections]


def server_cpu_seconds(pids: list[int]) -> float | None:
    """utime + stime of these server processes, or None when they are not on this machine."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    try:
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None
    return total / ticks


async def run_writers(
    steps: list[Step], warmup: float, seconds: float, pool: asyncpg.Pool | None = None
) -> Figure:
    """Run every writer's step in a loop: `warmup` seconds untimed, then `seconds` timed.

    With `pool`, the CPU time of its server processes is measured too (local servers only).
    """

    # Before any writer holds a connection: this opens all of them, and they stay pooled.
    pids = await backend_pids(pool) if pool is not None else []

    async def loop(step: Step, until: float) -> int:
        done = 0
        while time.perf_counter() < until:
            done += await step()
        return done

    if warmup > 0:
        until = time.perf_counter() + warmup
        await gather_all([loop(step, until) for step in steps])
    server_before = server_cpu_seconds(pids)
    client_before = time.process_time()
    started = time.perf_counter()
    counts = await gather_all([loop(step, started + seconds) for step in steps])
    elapsed = time.perf_counter() - started
    client_cpu = time.process_time() - client_before
    server_after = server_cpu_seconds(pids)
    server_cpu = (
        server_after - server_before
        if server_before is not None and server_after is not None and pids
        else None
    )
    return Figure(sum(counts), elapsed, client_cpu, server_cpu)


def raw_insert_step(
    pool: asyncpg.Pool, query: str, stream_id: str, connections: AsyncExitStack
) -> Step:
    """A writer inserting one row per autocommit statement on a connection of its own."""
    state = {"version": 0}
    held: list[Any] = []
    writer = int(stream_id.rsplit("-", 1)[1])

    async def step() -> int:
        if not held:
            held.append(await connections.enter_async_context(pool.acquire()))
        connection = held[0]
        version = state["version"] + 1
        event = new_event(writer, version)
        data = orjson.dumps(event.data).decode()
        metadata = orjson.dumps(event.metadata).decode()
        digest = hashlib.sha256(_PREV_HASH + data.encode()).digest()
        await connection.execute(
            query, stream_id, version, event.event_id, event.event_type, data, metadata,
            digest, _PREV_HASH,
        )  # fmt: skip
        state["version"] = version
        return 1

    return step


def append_step(store: EventStore, stream_id: str, batch: int) -> Step:
    """A writer appending `batch` events per call with the exact expected version."""
    state = {"version": 0, "sequence": 0}
    writer = int(stream_id.rsplit("-", 1)[1])

    async def step() -> int:
        first = state["sequence"]
        events = [new_event(writer, first + offset) for offset in range(batch)]
        result = await store.append(stream_id, events, state["version"])
        state["version"] = result.version
        state["sequence"] = first + batch
        return batch

    return step


def direct_append_step(
    pool: asyncpg.Pool, schema: str, stream_id: str, batch: int, connections: AsyncExitStack
) -> Step:
    """`append_events` on a held connection, data encoded up front: the database's share."""
    writer = int(stream_id.rsplit("-", 1)[1])
    template = [new_event(writer, offset) for offset in range(batch)]
    types = [event.event_type for event in template]
    data = [canonical_json(event.data) for event in template]
    metadata = [canonical_json(event.metadata) for event in template]
    data_text = [item.decode() for item in data]
    metadata_text = [item.decode() for item in metadata]
    query = DIRECT_APPEND.format(schema=schema)
    state = {"version": 0}
    held: list[Any] = []

    async def step() -> int:
        if not held:
            held.append(await connections.enter_async_context(pool.acquire()))
        ids = [uuid.uuid4() for _ in range(batch)]
        bodies = [
            event_body(stream_id, event_id, EVENT_TYPE, d, m)
            for event_id, d, m in zip(ids, data, metadata, strict=True)
        ]
        await held[0].fetch(
            query, stream_id, state["version"], ids, types, data_text, metadata_text, bodies
        )
        state["version"] += batch
        return batch

    return step


async def read_all_pass(store: EventStore, limit: int, until: float | None = None) -> int:
    """Read the whole log from START in pages; stop early once `until` has passed."""
    after: Position = START
    read = 0
    while True:
        page = await store.read_all(after, limit=limit)
        if not page:
            return read
        read += len(page)
        after = page[-1].position
        if until is not None and time.perf_counter() >= until:
            return read


async def measure_read_all(store: EventStore, limit: int, warmup: float, seconds: float) -> Figure:
    """Whole passes over the log, repeated until `seconds` have passed (at least one)."""
    if warmup > 0:
        until = time.perf_counter() + warmup
        while time.perf_counter() < until:
            await read_all_pass(store, limit, until)
    stored = await store.pool.fetchval(f"select count(*) from {store.schema}.events")
    started = time.perf_counter()
    read = 0
    passes = 0
    while passes == 0 or time.perf_counter() - started < seconds:
        got = await read_all_pass(store, limit)
        if got != stored:
            log(
                f"warning: read_all returned {got} of {stored} stored events (a transaction"
                " older than the appends is still running on this server?)"
            )
        read += got
        passes += 1
    elapsed = time.perf_counter() - started
    log(f"read_all: {passes} passes over {stored} events")
    return Figure(read, elapsed)


# --------------------------------------------------------------------------- the benchmark


async def benchmark(args: argparse.Namespace, dsn: str) -> dict[str, Figure]:
    schema = f"bench_{secrets.token_hex(4)}"
    writers: int = args.writers
    figures: dict[str, Figure] = {}
    store = await EventStore.open(dsn, schema, pool_size=writers)
    owned: list[EventStore] = [store]
    try:
        log(f"schema {schema}, {writers} writers, {args.seconds:g} s per phase")
        server = await store.pool.fetchval("show server_version")
        sync = await store.pool.fetchval("show synchronous_commit")
        log(f"server {server}, synchronous_commit={sync}, client cpus={os.cpu_count()}")

        def appends(target: EventStore, prefix: str, batch: int) -> Callable[[], Awaitable[Figure]]:
            return lambda: run_writers(
                [append_step(target, f"{prefix}-{i}", batch) for i in range(writers)],
                args.warmup, args.seconds, target.pool,
            )  # fmt: skip

        def held(
            make: Callable[[int, AsyncExitStack], Step], pool: asyncpg.Pool
        ) -> Callable[[], Awaitable[Figure]]:
            async def phase() -> Figure:
                async with AsyncExitStack() as connections:
                    steps = [make(i, connections) for i in range(writers)]
                    return await run_writers(steps, args.warmup, args.seconds, pool)

            return phase

        def raw(table: str, indexed_like_events: bool) -> Callable[[], Awaitable[Figure]]:
            async def create() -> Figure:
                await store.pool.execute(RAW_TABLE_DDL.format(schema=schema, table=table))
                if indexed_like_events:
                    for ddl in EVENTS_LIKE_EXTRA_DDL:
                        await store.pool.execute(ddl.format(schema=schema, table=table))
                query = RAW_INSERT.format(schema=schema, table=table)
                return await held(
                    lambda i, stack: raw_insert_step(store.pool, query, f"raw-{i}", stack),
                    store.pool,
                )()

            return create

        def direct(target: EventStore, batch: int) -> Callable[[], Awaitable[Figure]]:
            return held(
                lambda i, stack: direct_append_step(
                    target.pool, target.schema, f"direct{batch}-{i}", batch, stack
                ),
                target.pool,
            )

        phases: list[tuple[str, Callable[[], Awaitable[Figure]]]] = [
            ("raw_insert", raw("raw_events", False)),
            ("append", appends(store, "bench", 1)),
            ("append_batch100", appends(store, "batch", args.batch)),
        ]
        if args.diagnose:
            phases += [
                ("diag_raw_insert_indexed_like_events", raw("raw_indexed", True)),
                ("diag_direct_append_events", direct(store, 1)),
                ("diag_direct_append_events_batch100", direct(store, args.batch)),
            ]
        for name, phase in phases:
            figure = figures[name] = await phase()
            per_event = 1e6 / max(figure.events, 1)
            cpu = f", client cpu {figure.client_cpu * per_event:.0f} us/event"
            if figure.server_cpu is not None:
                cpu += f", server backends cpu {figure.server_cpu * per_event:.0f} us/event"
            log(f"{name}: {figure.events} events in {figure.seconds:.2f} s{cpu}")
        figures["read_all"] = await measure_read_all(
            store, args.read_limit, args.warmup, args.seconds
        )
        log(f"read_all: {figures['read_all'].events} events in {figures['read_all'].seconds:.2f} s")
    finally:
        for target in owned[1:]:
            await target.close()
        for dropped in sorted({target.schema for target in owned}):
            await store.pool.execute(f"drop schema if exists {dropped} cascade")
        await store.close()
    return figures


def report(figures: dict[str, Figure]) -> None:
    def goal(value: float, target: float, shown: str) -> str:
        return f"  (goal >= {shown}: {'met' if value >= target else 'MISSED'})"

    raw = figures["raw_insert"].per_second
    append = figures["append"].per_second
    batch = figures["append_batch100"].per_second
    read = figures["read_all"].per_second
    print(f"raw_insert_events_per_s: {raw:.0f}")
    print(f"append_events_per_s: {append:.0f}")
    print(
        f"append_batch100_events_per_s: {batch:.0f}"
        + goal(batch, GOAL_BATCH_EVENTS_PER_S, f"{GOAL_BATCH_EVENTS_PER_S:,.0f}")
    )
    print(
        f"read_all_events_per_s: {read:.0f}"
        + goal(read, GOAL_READ_ALL_EVENTS_PER_S, f"{GOAL_READ_ALL_EVENTS_PER_S:,.0f}")
    )
    for name, figure in figures.items():
        if name.startswith("diag_"):
            print(f"{name}_events_per_s: {figure.per_second:.0f}")
    ratio = append / raw if raw > 0 else 0.0
    print(f"append_vs_raw_insert: {ratio:.2f}" + goal(ratio, GOAL_RATIO, f"{GOAL_RATIO:.2f}"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dsn", default=os.environ.get(DSN_ENV), help=f"default: ${DSN_ENV}")
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per phase")
    parser.add_argument("--warmup", type=float, default=1.0, help="untimed seconds per phase")
    parser.add_argument("--writers", type=int, default=16, help="concurrent writers")
    parser.add_argument("--batch", type=int, default=100, help="events per batched append")
    parser.add_argument("--read-limit", type=int, default=10_000, help="read_all page size")
    parser.add_argument("--diagnose", action="store_true", help="add the cost-split phases")
    args = parser.parse_args(argv)
    if args.writers < 1 or args.seconds <= 0 or args.warmup < 0 or args.batch < 1:
        parser.error("--writers and --batch must be >= 1, --seconds > 0, --warmup >= 0")
    return args


def on_postgres(dsn: str | None, run: Callable[[str], Coroutine[Any, Any, T]]) -> T:
    """`run(dsn)` to the end; without a DSN, on an embedded PostgreSQL in a temporary
    directory, removed afterwards (needs the `embedded` extra)."""
    if dsn:
        return asyncio.run(run(dsn))
    from ledger.embedded import EmbeddedPostgres

    data_dir = Path(tempfile.mkdtemp(prefix="ledger-bench-pg-"))
    server = EmbeddedPostgres(data_dir)
    try:
        log(f"starting an embedded PostgreSQL in {data_dir}")
        return asyncio.run(run(server.start()))
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report(on_postgres(args.dsn, lambda dsn: benchmark(args, dsn)))


if __name__ == "__main__":
    main()
