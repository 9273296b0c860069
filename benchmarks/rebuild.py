"""Projection rebuild throughput against streaming the same events out, measured in one run.

    python benchmarks/rebuild.py [--dsn DSN] [--events 1000000] [--streams 10000]

Phases, against a fresh schema `bench_rebuild_<hex>` (dropped at the end unless `--keep`):

  (0) load: `--events` money events (`Deposited` / `Withdrawn`, integer minor units, tracing
      metadata) over `--streams` streams, through `EventStore.append` in batches of
      `--batch` events, `--writers` appends at once: the store's own path, hash chain and all.
      Then VACUUM ANALYZE, as a long-lived store would have had.
  (a) read_all (the baseline): `EventStore.read_all` of every event from START in pages of
      10,000, decoded into RecordedEvents, no projection work: what the store can stream
      into Python here.
  (b) rebuild: `eventstore.rebuild` of `stream_balances` (one row per stream: balance and
      version; an inline projection whose `apply_batch` folds a page in Python and writes it
      in one statement) into a shadow table, swapped in at the end, exactly as
      `ledger projections rebuild` runs it. The rebuilt table is checked against the totals
      of what was loaded.
  (c) rebuild_per_event: the same projection without `apply_batch` (one upsert per event,
      the default path of a projection that only has `apply`), over the first
      `--per-event-events` events in a schema of their own: what a projection that does not
      batch gets.

`--schema NAME --keep` loads once and reuses the events on the next run (for profiling).
The DSN comes from `--dsn`, else LEDGER_BENCH_DATABASE_URL, else an embedded PostgreSQL runs
in a temporary directory. Figures go to stdout, one a line, goals beside them; progress to
stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from eventstore import START, EventStore, NewEvent, Projection, RecordedEvent, rebuild
from eventstore._db import Connection
from ledger.embedded import servers

DSN_ENV: Final = "LEDGER_BENCH_DATABASE_URL"
GOAL_REBUILD_EVENTS_PER_S: Final = 100_000.0
READ_PAGE_EVENTS: Final = 10_000


class StreamBalances(Projection):
    """One row per stream: the sum of its deposits less its withdrawals, and its version."""

    name = "stream_balances"
    table = "stream_balances"
    key_columns = ("stream_id",)

    def create_sql(self, table: str) -> str:
        """The balances table."""
        return (
            f"create table {table} (stream_id text primary key,"
            " balance_minor bigint not null, version bigint not null)"
        )

    async def apply(self, connection: Connection, table: str, event: RecordedEvent) -> None:
        """One upsert per event."""
        delta = _delta(event)
        if delta:
            await connection.execute(_UPSERT_ONE.format(table=table), event.stream_id, delta,
                                     event.stream_version)  # fmt: skip


class BatchedStreamBalances(StreamBalances):
    """The same read model, written one page at a time."""

    async def apply_batch(
        self, connection: Connection, table: str, events: Sequence[RecordedEvent]
    ) -> None:
        """Fold the page per stream in Python, then upsert every touched row at once."""
        deltas: dict[str, int] = {}
        versions: dict[str, int] = {}
        for event in events:
            delta = _delta(event)
            if delta:
                stream_id = event.stream_id
                deltas[stream_id] = deltas.get(stream_id, 0) + delta
                versions[stream_id] = event.stream_version
        if deltas:
            await connection.execute(
                _UPSERT_MANY.format(table=table), list(deltas), list(deltas.values()),
                [versions[stream_id] for stream_id in deltas],
            )  # fmt: skip


_UPSERT_ONE: Final = (
    "insert into {table} as b (stream_id, balance_minor, version) values ($1, $2, $3)"
    " on conflict (stream_id) do update set"
    " balance_minor = b.balance_minor + excluded.balance_minor, version = excluded.version"
)
_UPSERT_MANY: Final = (
    "insert into {table} as b (stream_id, balance_minor, version)"
    " select * from unnest($1::text[], $2::bigint[], $3::bigint[])"
    " on conflict (stream_id) do update set"
    " balance_minor = b.balance_minor + excluded.balance_minor, version = excluded.version"
)


def _delta(event: RecordedEvent) -> int:
    if event.event_type == "Deposited":
        return int(event.data["amount_minor"])
    if event.event_type == "Withdrawn":
        return -int(event.data["amount_minor"])
    return 0


@dataclass(frozen=True, slots=True)
class Figure:
    """One timed phase: how many events in how many seconds, and this process's CPU time."""

    events: int
    seconds: float
    client_cpu_s: float

    @property
    def per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def money_event(stream: int, sequence: int) -> NewEvent:
    """A deposit, or every fifth event a withdrawal, with the metadata a real one carries."""
    amount_minor = 100 + (stream * 7 + sequence * 13) % 9_900
    event_type = "Withdrawn" if sequence % 5 == 4 else "Deposited"
    return NewEvent(
        event_type,
        {"amount_minor": amount_minor, "currency": "USD", "reference": f"ref-{stream}-{sequence}"},
        {"correlation_id": str(uuid.uuid4()), "actor": "bench"},
    )


def expected_totals(events: int, streams: int) -> tuple[int, int]:
    """(rows, sum of balances) the projection must hold after `events` loaded events."""
    total = 0
    for number in range(events):
        stream, sequence = number % streams, number // streams
        amount_minor = 100 + (stream * 7 + sequence * 13) % 9_900
        total += -amount_minor if sequence % 5 == 4 else amount_minor
    return min(events, streams), total


async def load(store: EventStore, args: argparse.Namespace, events: int) -> Figure:
    """Append `events` events round-robin over the streams, `--batch` per append."""
    # Event n goes to stream n % streams as its (n // streams)-th event; each append carries
    # `batch` consecutive events of one stream, so streams fill in rounds of `batch`.
    streams, batch = min(args.streams, events), args.batch
    jobs = [
        (stream, first, min(batch, (events - stream + streams - 1) // streams - first))
        for first in range(0, (events + streams - 1) // streams, batch)
        for stream in range(streams)
    ]
    jobs = [job for job in jobs if job[2] > 0]
    queue: asyncio.Queue[tuple[int, int, int]] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    done = 0

    async def writer() -> None:
        nonlocal done
        while not queue.empty():
            stream, first, count = queue.get_nowait()
            await store.append(
                f"acct-{stream}", [money_event(stream, first + i) for i in range(count)]
            )
            done += count
            if done // 100_000 != (done - count) // 100_000:
                log(f"  loaded {done:,} events")

    client_before, started = time.process_time(), time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(args.writers):
            group.create_task(writer())
    return Figure(done, time.perf_counter() - started, time.process_time() - client_before)


async def measure_read_all(store: EventStore) -> Figure:
    """Stream every event out with read_all, decoding included, doing nothing with them."""
    client_before, started = time.process_time(), time.perf_counter()
    count, position = 0, START
    while page := await store.read_all(position, limit=READ_PAGE_EVENTS):
        count += len(page)
        position = page[-1].position
    return Figure(count, time.perf_counter() - started, time.process_time() - client_before)


async def measure_rebuild(store: EventStore, projection: Projection) -> Figure:
    """Rebuild `projection` (inline in `store`) into its shadow and swap it in."""
    client_before, started = time.process_time(), time.perf_counter()
    report = await rebuild(store, projection)
    assert report.swapped, "the rebuild swapped its shadow in"
    return Figure(report.events, time.perf_counter() - started,
                  time.process_time() - client_before)  # fmt: skip


async def check_totals(
    store: EventStore, projection: Projection, expected: tuple[int, int]
) -> None:
    row = await store.pool.fetchrow(
        f"select count(*), coalesce(sum(balance_minor), 0) from {store.schema}.{projection.table}"
    )
    assert row is not None
    found = (int(row[0]), int(row[1]))
    assert found == expected, f"rebuilt table holds {found}, expected {expected}"


async def loaded_store(
    dsn: str,
    schema: str,
    args: argparse.Namespace,
    events: int,
    figures: dict[str, Figure],
    projection: Projection,
) -> EventStore:
    """The store with `projection` inline, loaded with `events` events unless it has them."""
    store = await EventStore.open(dsn, schema, pool_size=max(4, args.writers),
                                  inline_projections=[projection])  # fmt: skip
    stored = int(await store.pool.fetchval(f"select count(*) from {schema}.events"))
    if stored == 0:
        # The live table stays empty while loading: inline projections are not what this
        # measures, so the events go through a store that keeps none.
        plain = EventStore(store.pool, schema)
        log(f"loading {events:,} events into {schema}")
        figures[f"load:{schema}"] = await load(plain, args, events)
        # As a long-lived store would be: otherwise whichever phase reads the fresh rows
        # first pays for setting their hint bits, and the comparison says nothing.
        log(f"vacuum analyze {schema}.events")
        await store.pool.execute(f"vacuum analyze {schema}.events")
    elif stored != events:
        await store.close()
        raise SystemExit(f"{schema} holds {stored:,} events, not {events:,}; drop it first")
    else:
        log(f"reusing the {stored:,} events of {schema}")
    return store


async def benchmark(args: argparse.Namespace, dsn: str) -> dict[str, Figure]:
    schema = args.schema or f"bench_rebuild_{secrets.token_hex(4)}"
    figures: dict[str, Figure] = {}
    projection = BatchedStreamBalances()
    store = await loaded_store(dsn, schema, args, args.events, figures, projection)
    try:
        log("read_all baseline")
        figures["read_all"] = await measure_read_all(store)
        log("rebuild")
        figures["rebuild"] = await measure_rebuild(store, projection)
        await check_totals(store, projection, expected_totals(args.events, args.streams))
    finally:
        if not args.keep:
            await store.pool.execute(f"drop schema if exists {schema} cascade")
        await store.close()
    if args.per_event_events > 0:
        small_schema = f"{schema}_per_event"
        per_event = StreamBalances()
        small = await loaded_store(dsn, small_schema, args, args.per_event_events, figures,
                                   per_event)  # fmt: skip
        try:
            log("rebuild, one upsert per event")
            figures["rebuild_per_event"] = await measure_rebuild(small, per_event)
            await check_totals(small, per_event,
                               expected_totals(args.per_event_events, args.streams))  # fmt: skip
        finally:
            if not args.keep:
                await small.pool.execute(f"drop schema if exists {small_schema} cascade")
            await small.close()
    return figures


def report(figures: dict[str, Figure], args: argparse.Namespace) -> None:
    for name, figure in figures.items():
        if name.startswith("load:"):
            print(f"load_events_per_s: {figure.per_second:,.0f} ({figure.events:,} events,"
                  f" {args.writers} writers, {args.batch} per append)")  # fmt: skip
    read_all, rebuilt = figures["read_all"], figures["rebuild"]
    is_met = rebuilt.per_second >= GOAL_REBUILD_EVENTS_PER_S
    print(
        f"read_all_events_per_s: {read_all.per_second:,.0f}"
        f" ({read_all.events:,} events, client cpu {read_all.client_cpu_s:.1f} s)"
    )
    print(
        f"rebuild_events_per_s: {rebuilt.per_second:,.0f}"
        f" ({rebuilt.events:,} events in {rebuilt.seconds:.1f} s, client cpu"
        f" {rebuilt.client_cpu_s:.1f} s)  (goal >= {GOAL_REBUILD_EVENTS_PER_S:,.0f}:"
        f" {'met' if is_met else 'MISSED'})"
    )
    print(f"ratio_rebuild/read_all: {rebuilt.per_second / read_all.per_second:.2f}")
    if "rebuild_per_event" in figures:
        per_event = figures["rebuild_per_event"]
        print(
            f"rebuild_per_event_events_per_s: {per_event.per_second:,.0f}"
            f" ({per_event.events:,} events, one upsert each)"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dsn", default=os.environ.get(DSN_ENV), help=f"default: ${DSN_ENV}")
    parser.add_argument("--events", type=int, default=1_000_000, help="events to rebuild from")
    parser.add_argument("--streams", type=int, default=10_000, help="streams they spread over")
    parser.add_argument("--batch", type=int, default=500, help="events per append while loading")
    parser.add_argument("--writers", type=int, default=4, help="concurrent appends while loading")
    parser.add_argument(
        "--per-event-events",
        type=int,
        default=20_000,
        help="events of the one-upsert-per-event rebuild (0: skip it)",
    )
    parser.add_argument(
        "--schema",
        help="schema to load into, or to reuse when it holds the"
        " events already (default: a fresh one)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the schemas at the end")
    args = parser.parse_args(argv)
    if min(args.events, args.streams, args.batch, args.writers) < 1:
        parser.error("--events, --streams, --batch and --writers must be positive")
    if args.batch > 10_000 or args.per_event_events < 0:
        parser.error("--batch is at most 10000 and --per-event-events at least 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ledger-bench-rebuild-") as data_dir:
        if not args.dsn:
            log(f"starting an embedded PostgreSQL in {data_dir}")
        with servers(Path(data_dir), args.dsn or None, "unused") as (dsn, _):
            figures = asyncio.run(benchmark(args, dsn))
    report(figures, args)


if __name__ == "__main__":
    main()
