"""Relay throughput (commit to JetStream ack) and commit-to-handler lag, measured in one run.

    python benchmarks/relay.py [--dsn DSN] [--nats URL] [--events 50000] [--rate 1000]

Phases, against a fresh schema `bench_relay_<hex>` (dropped at the end) and subjects
`ledger.<service>.>` with a service name of this run alone (purged from the stream at the end):

  (a) relay throughput: `--events` events are appended first (batched appends across 100
      `thru-N` streams), then `EventRelay.catch_up()` is timed until its checkpoint reaches
      the head: events/s from the committed log to JetStream acks. In the same run, three
      baselines: `publish_async_baseline`, nats-py's `js.publish_async` of the same bodies
      and headers (fresh message ids, so nothing is deduplicated) in batches of the relay's
      size, awaiting each batch's acks, without PostgreSQL (the relay's way before
      `BatchPublisher`); `batch_publisher_only`, the relay's `BatchPublisher` the same way;
      and `read_checkpoint_only`, the same subscription with a handler that does nothing
      (PostgreSQL reads, decoding, checkpoints).
  (b) lag: one event per append, paced at `--rate` events/s for `--lag-seconds` (appends
      run concurrently, up to `--max-in-flight`, so the pace holds when one commit is slow),
      on `lag-N` streams, while `EventRelay.run()` follows the store and a `DurableConsumer`
      (durable pull consumer, the handler's transaction records the message in the inbox
      and commits before the ack; `--consumer plain` uses a plain JetStream pull
      subscription without PostgreSQL instead) filtered on `ledger.<service>.lag.>` records,
      per event, when its handler ran. Two lags are reported: from the event's
      `recorded_at` (the start of its append's transaction, so it includes the append's own
      commit) and from the moment the append call returned (keyed by event id: commit to
      handler, as the issue asks).

The DSN comes from `--dsn` else LEDGER_BENCH_DATABASE_URL, the NATS URL from `--nats` else
LEDGER_BENCH_NATS_URL; when missing, embedded servers run in a temporary directory.
Figures go to stdout, one per line, goals beside them; progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from eventstore import ANY, EventStore, NewEvent, Position, RecordedEvent, Subscription
from eventstore._db import Connection
from ledger.bus import connect, ensure_streams, event_subject
from ledger.consumers import ConsumedEvent, ConsumerOptions, DurableConsumer
from ledger.publisher import BatchPublisher, Outgoing
from ledger.relay import MSG_ID_HEADER, EventRelay, event_message
from ledger.settings import Settings

DSN_ENV: Final = "LEDGER_BENCH_DATABASE_URL"
NATS_ENV: Final = "LEDGER_BENCH_NATS_URL"
GOAL_RELAY_EVENTS_PER_S: Final = 10_000.0
GOAL_P99_LAG_MS: Final = 100.0
THROUGHPUT_STREAMS: Final = 100
LAG_STREAMS: Final = 100
DRAIN_TIMEOUT_S: Final = 30.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def new_event(number: int) -> NewEvent:
    """A money event like the account service's: integer minor units and tracing metadata."""
    return NewEvent(
        "FundsDeposited",
        {"amount_minor": 12345 + number % 1000, "currency": "USD", "reference": f"dep-{number}"},
        {"correlation_id": str(uuid.uuid4()), "causation_id": str(uuid.uuid4()), "actor": "bench"},
    )


# --------------------------------------------------------------------------- (a) throughput


async def wait_settled(store: EventStore, position: Position) -> None:
    """Wait until read_all sees `position`: any transaction on the server holds xmin back."""
    async with asyncio.timeout(DRAIN_TIMEOUT_S):
        while not await store.pool.fetchval(  # noqa: ASYNC110 (the server has no event to wait on)
            "select $1::xid8 < pg_snapshot_xmin(pg_current_snapshot())", position.tx_id
        ):
            await asyncio.sleep(0.01)


async def append_backlog(store: EventStore, count: int, batch: int) -> list[RecordedEvent]:
    """Append `count` events in batches across THROUGHPUT_STREAMS streams, a few at a time."""
    appended: list[RecordedEvent] = []
    numbers = iter(range(count))

    async def writer(stream: int) -> None:
        while events := [new_event(number) for number in itertools.islice(numbers, batch)]:
            result = await store.append(f"thru-{stream}", events, ANY)
            appended.extend(result.events)

    async with asyncio.TaskGroup() as group:
        for stream in range(min(8, THROUGHPUT_STREAMS)):
            group.create_task(writer(stream))
    return appended


def fresh_messages(service: str, events: Sequence[RecordedEvent]) -> list[Outgoing]:
    """The events' bodies and headers under new message ids (nothing is deduplicated)."""
    messages = []
    for event in events:
        body, headers = event_message(event)
        fresh = {**headers, MSG_ID_HEADER: str(uuid.uuid4())}
        messages.append(Outgoing(event_subject(service, "base", event.event_type), body, fresh))
    return messages


async def publish_async_baseline(
    js: JetStreamContext, stream: str, messages: Sequence[Outgoing], batch: int
) -> float:
    """Seconds to publish with nats-py's `publish_async` in batches awaiting acks (the
    relay's way before `BatchPublisher`), without PostgreSQL."""
    started = time.perf_counter()
    for first in range(0, len(messages), batch):
        acks = []
        for message in messages[first : first + batch]:
            headers = dict(message.headers)  # publish_async adds to the dict it is given
            ack = await js.publish_async(message.subject, message.body, headers=headers,
                                         stream=stream)  # fmt: skip
            acks.append(ack)
        await asyncio.gather(*acks)
    return time.perf_counter() - started


async def batch_publisher_baseline(
    nc: Client, stream: str, messages: Sequence[Outgoing], batch: int
) -> float:
    """Seconds to publish with the relay's `BatchPublisher` alone, without PostgreSQL."""
    started = time.perf_counter()
    async with BatchPublisher(nc, stream) as publisher:
        for first in range(0, len(messages), batch):
            await publisher.publish(messages[first : first + batch], DRAIN_TIMEOUT_S)
    return time.perf_counter() - started


async def read_checkpoint_only(store: EventStore, batch: int) -> tuple[int, float]:
    """Events and seconds of a subscription over the whole log whose handler does nothing."""

    async def nothing(_: Connection, __: Sequence[RecordedEvent]) -> None:
        return None

    subscription = Subscription(store, "bench-noop", nothing, batch_size=batch)
    started = time.perf_counter()
    count = await subscription.catch_up()
    return count, time.perf_counter() - started


@dataclass
class Throughput:
    events: int
    relay_s: float
    relay_cpu_s: float
    publish_async_s: float
    publisher_s: float
    read_only_s: float


async def measure_throughput(
    store: EventStore, nc: Client, service: str, settings: Settings, count: int
) -> Throughput:
    log(f"appending {count} events for the throughput phase")
    appended = await append_backlog(store, count, batch=500)
    await wait_settled(store, max(event.position for event in appended))
    batch, stream = settings.relay_batch_events, settings.events_stream
    publish_async_s = await publish_async_baseline(
        nc.jetstream(), stream, fresh_messages(service, appended), batch
    )
    publisher_s = await batch_publisher_baseline(
        nc, stream, fresh_messages(service, appended), batch
    )
    read_count, read_only_s = await read_checkpoint_only(store, batch)
    assert read_count == count, f"the no-op subscription read {read_count} of {count}"
    relay = EventRelay(store, nc, service, settings)
    cpu_before = time.process_time()
    started = time.perf_counter()
    published = await relay.catch_up()
    relay_s = time.perf_counter() - started
    relay_cpu_s = time.process_time() - cpu_before
    assert published == count, f"the relay published {published} of {count}"
    return Throughput(count, relay_s, relay_cpu_s, publish_async_s, publisher_s, read_only_s)


# --------------------------------------------------------------------------- (b) lag


@dataclass
class LagProbe:
    """When each lag event's append returned, and the lags its handler observed."""

    returned_at: dict[str, float] = field(default_factory=dict)
    from_recorded_s: list[float] = field(default_factory=list)
    from_return_s: list[float] = field(default_factory=list)
    early: int = 0

    def observe(self, event_id: str, recorded_at: datetime) -> None:
        now = time.perf_counter()
        self.from_recorded_s.append((datetime.now(UTC) - recorded_at).total_seconds())
        returned = self.returned_at.get(event_id)
        if returned is None:
            # The handler ran before the append's call returned to its caller.
            self.early += 1
            self.from_return_s.append(0.0)
        else:
            self.from_return_s.append(now - returned)


async def paced_appends(
    store: EventStore, probe: LagProbe, rate: float, seconds: float, max_in_flight: int
) -> tuple[int, float]:
    """Append one event per call at `rate` per second; return how many and the seconds taken."""
    total = int(rate * seconds)
    slots = asyncio.Semaphore(max_in_flight)

    async def append_one(number: int) -> None:
        try:
            event = new_event(number)
            await store.append(f"lag-{number % LAG_STREAMS}", [event], ANY)
            probe.returned_at[str(event.event_id)] = time.perf_counter()
        finally:
            slots.release()

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for number in range(total):
            delay_s = started + number / rate - time.perf_counter()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            await slots.acquire()
            group.create_task(append_one(number))
    return total, time.perf_counter() - started


async def durable_consumer(
    nc: Client, store: EventStore, service: str, settings: Settings, probe: LagProbe
) -> DurableConsumer:
    async def handle(_: Connection, event: ConsumedEvent) -> None:
        probe.observe(event.event_id, event.recorded_at)

    consumer = DurableConsumer(
        nc, store, f"bench-lag-{service}", f"ledger.{service}.lag.>", handle,
        ConsumerOptions.from_settings(settings, fetch_wait_s=0.5),
    )  # fmt: skip
    await consumer.ensure()
    return consumer


async def plain_consumer(
    js: JetStreamContext, service: str, settings: Settings, probe: LagProbe
) -> JetStreamContext.PullSubscription:
    return await js.pull_subscribe(
        f"ledger.{service}.lag.>", durable=f"bench-lag-{service}", stream=settings.events_stream
    )


async def pull_loop(subscription: JetStreamContext.PullSubscription, probe: LagProbe) -> None:
    while True:
        try:
            messages: list[Msg] = await subscription.fetch(100, timeout=0.5)
        except TimeoutError:
            continue
        for message in messages:
            decoded: dict[str, Any] = orjson.loads(message.data)
            probe.observe(decoded["event_id"], datetime.fromisoformat(decoded["recorded_at"]))
            await message.ack()


@dataclass
class Lag:
    appended: int
    append_s: float
    probe: LagProbe
    process_cpu_s: float
    machine_busy: float | None


def machine_busy_ticks() -> tuple[int, int] | None:
    """(busy, total) CPU ticks of the whole machine since boot, from /proc/stat (Linux)."""
    try:
        ticks = [int(part) for part in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle and iowait
    return sum(ticks) - idle, sum(ticks)


async def measure_lag(
    store: EventStore, nc: Client, service: str, settings: Settings, args: argparse.Namespace
) -> Lag:
    js = nc.jetstream()
    probe = LagProbe()
    relay = EventRelay(store, nc, service, settings)
    async with asyncio.TaskGroup() as group:
        relay_task = group.create_task(relay.run())
        if args.consumer == "durable":
            consumer = await durable_consumer(nc, store, service, settings, probe)
            consumer_task = group.create_task(consumer.run())
        else:
            subscription = await plain_consumer(js, service, settings, probe)
            consumer_task = group.create_task(pull_loop(subscription, probe))
        log(f"appending at {args.rate:g} events/s for {args.lag_seconds:g} s")
        cpu_before, machine_before = time.process_time(), machine_busy_ticks()
        appended, append_s = await paced_appends(
            store, probe, args.rate, args.lag_seconds, args.max_in_flight
        )
        process_cpu_s, machine_after = time.process_time() - cpu_before, machine_busy_ticks()
        deadline = time.perf_counter() + DRAIN_TIMEOUT_S
        while len(probe.from_return_s) < appended and time.perf_counter() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # a progress poll: simpler than an event per handled message
        relay_task.cancel()
        consumer_task.cancel()
    if args.consumer == "durable":
        await nc.jetstream().delete_consumer(settings.events_stream, f"bench-lag-{service}")
    else:
        with suppress(Exception):
            await subscription.unsubscribe()
        await js.delete_consumer(settings.events_stream, f"bench-lag-{service}")
    machine_busy = None
    if machine_before is not None and machine_after is not None:
        busy, total = (after - before for after, before in zip(machine_after, machine_before,
                                                               strict=True))  # fmt: skip
        machine_busy = busy / total if total else None
    return Lag(appended, append_s, probe, process_cpu_s, machine_busy)


# --------------------------------------------------------------------------- running it


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


async def benchmark(args: argparse.Namespace, dsn: str, nats_url: str) -> tuple[Throughput, Lag]:
    token = secrets.token_hex(4)
    schema, service = f"bench_relay_{token}", f"bench{token}"
    settings = Settings(subscription_poll_interval_s=1.0)
    async with AsyncExitStack() as stack:
        store = await EventStore.open(dsn, schema, pool_size=args.pool_size)
        stack.push_async_callback(store.close)
        stack.push_async_callback(store.pool.execute, f"drop schema if exists {schema} cascade")
        nc = await connect([nats_url], f"bench-relay-{token}")
        stack.push_async_callback(nc.drain)
        js = nc.jetstream()
        await ensure_streams(js, settings)
        stack.push_async_callback(
            js.purge_stream, settings.events_stream, subject=f"ledger.{service}.>"
        )
        log(f"schema {schema}, subjects ledger.{service}.>, client cpus={os.cpu_count()}")
        throughput = await measure_throughput(store, nc, service, settings, args.events)
        lag = await measure_lag(store, nc, service, settings, args)
    return throughput, lag


def report(throughput: Throughput, lag: Lag, args: argparse.Namespace) -> None:
    def goal(is_met: bool, shown: str) -> str:
        return f"  (goal {shown}: {'met' if is_met else 'MISSED'})"

    relay_rate = throughput.events / throughput.relay_s
    print(
        f"relay_events_per_s: {relay_rate:.0f}"
        + goal(relay_rate >= GOAL_RELAY_EVENTS_PER_S, f">= {GOAL_RELAY_EVENTS_PER_S:,.0f}")
    )
    print(f"relay_client_cpu_us_per_event: {throughput.relay_cpu_s * 1e6 / throughput.events:.0f}")
    publish_async_rate = throughput.events / throughput.publish_async_s
    print(f"publish_async_baseline_events_per_s: {publish_async_rate:.0f}")
    print(f"batch_publisher_only_events_per_s: {throughput.events / throughput.publisher_s:.0f}")
    print(f"read_checkpoint_only_events_per_s: {throughput.events / throughput.read_only_s:.0f}")
    probe = lag.probe
    print(f"lag_append_rate_events_per_s: {lag.appended / lag.append_s:.0f} (asked {args.rate:g})")
    print(f"lag_events_handled: {len(probe.from_return_s)} of {lag.appended} ({args.consumer})")
    # The lag's tail is time queued on one event loop: how busy it and the machine were.
    machine = "" if lag.machine_busy is None else f", machine {lag.machine_busy:.0%} of all cores"
    print(f"lag_phase_cpu: this process {lag.process_cpu_s / lag.append_s:.0%} of one core"
          f" (appends, relay and consumer share its loop){machine}")  # fmt: skip
    for name, values in (("commit", probe.from_return_s), ("recorded_at", probe.from_recorded_s)):
        p50, p99 = percentile(values, 0.5) * 1e3, percentile(values, 0.99) * 1e3
        worst = max(values, default=0.0) * 1e3
        is_met = p99 < GOAL_P99_LAG_MS
        shown = goal(is_met, f"p99 < {GOAL_P99_LAG_MS:.0f} ms") if name == "commit" else ""
        print(f"lag_from_{name}_ms: p50 {p50:.1f} p99 {p99:.1f} max {worst:.1f}{shown}")
    if probe.from_return_s:
        log(f"mean lag from commit {statistics.fmean(probe.from_return_s) * 1e3:.1f} ms,"
            f" {probe.early} handled before their append returned")  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dsn", default=os.environ.get(DSN_ENV), help=f"default: ${DSN_ENV}")
    parser.add_argument("--nats", default=os.environ.get(NATS_ENV), help=f"default: ${NATS_ENV}")
    parser.add_argument("--events", type=int, default=50_000, help="throughput phase events")
    parser.add_argument("--rate", type=float, default=1000.0, help="lag phase events/s")
    parser.add_argument("--lag-seconds", type=float, default=10.0, help="lag phase duration")
    parser.add_argument("--max-in-flight", type=int, default=32, help="concurrent lag appends")
    parser.add_argument("--pool-size", type=int, default=16, help="store connections")
    parser.add_argument("--consumer", choices=("durable", "plain"), default="durable")
    args = parser.parse_args(argv)
    if min(args.events, args.max_in_flight, args.pool_size) < 1 or args.rate <= 0:
        parser.error("--events, --max-in-flight, --pool-size and --rate must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ledger-bench-relay-") as temporary:
        from ledger.embedded import EmbeddedNats, EmbeddedPostgres

        postgres = None if args.dsn else EmbeddedPostgres(Path(temporary) / "pg")
        nats_server = None if args.nats else EmbeddedNats(Path(temporary) / "nats")
        try:
            dsn = args.dsn or postgres.start()  # type: ignore[union-attr]
            nats_url = args.nats or nats_server.start()  # type: ignore[union-attr]
            throughput, lag = asyncio.run(benchmark(args, dsn, nats_url))
        finally:
            for server in (nats_server, postgres):
                if server is not None:
                    server.stop()
            shutil.rmtree(temporary, ignore_errors=True)
    report(throughput, lag, args)


if __name__ == "__main__":
    main()
