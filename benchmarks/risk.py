"""Risk assessments per second with concurrent callers, in process and over NATS.

    python benchmarks/risk.py [--dsn DSN] [--nats URL] [--accounts 1000] [--callers 32]
                              [--seconds 5] [--warmup 1]

`--callers` tasks each repeat an assessment of one movement between two random distinct
accounts out of `--accounts` (all open in risk's account view, limits high enough that
nothing is refused). Phases, against one fresh schema `bench_<random>` dropped at the end:

  (a) baseline: one plain `append` of one event to the payer's stream per assessment, in a
      transaction (no projections, no rules, no account view);
  (b) in_process: `assess_movements` called directly in `store.unit_of_work()` (the lock,
      the account view, the state row, the rules, the append, the inline projections);
  (c) nats: the same through `CommandService` and `CommandClient` over NATS (adds the
      request/reply round trip and the recorded reply of each command).

The DSN comes from `--dsn` (else LEDGER_BENCH_DATABASE_URL), the NATS URL from `--nats`
(else LEDGER_BENCH_NATS_URL); without them embedded servers are started in a temporary
directory (the `embedded` extra). Figures go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from eventstore import EventStore, NewEvent
from ledger.bus import connect
from ledger.commands import CommandClient, CommandService
from ledger.consumers import ConsumedEvent
from ledger.embedded import servers
from risk_service.account_view import apply_account_event, ensure_table
from risk_service.commands import assess_movements, register_commands
from risk_service.contracts import Assess, Decision, Limits, Movement
from risk_service.projections import inline_projections

DSN_ENV: Final = "LEDGER_BENCH_DATABASE_URL"
NATS_ENV: Final = "LEDGER_BENCH_NATS_URL"
CURRENCY: Final = "USD"
LIMITS: Final = Limits(max_transfer_minor=10**9, daily_outflow_minor=10**15,
                       max_open_exposure_minor=10**15, max_movements_per_minute=100_000)

Assessment = Callable[[str, str], Awaitable[bool]]
"""Assess one movement from the first account to the second; True when approved."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get(DSN_ENV))
    parser.add_argument("--nats", default=os.environ.get(NATS_ENV))
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    return parser.parse_args(argv)


def assess_command(from_account: str, to_account: str) -> Assess:
    movement = Movement(leg_id="l1", from_account=from_account, to_account=to_account,
                        amount_minor=random.randint(1, 100), currency=CURRENCY)
    return Assess(command_id=uuid.uuid4(), transfer_id=uuid.uuid4().hex, movements=(movement,))


async def open_accounts(store: EventStore, account_ids: list[str]) -> None:
    """Put every account in risk's account view, as the consumer would."""
    async with store.pool.acquire() as connection, connection.transaction():
        for account_id in account_ids:
            event_id = str(uuid.uuid4())
            event = ConsumedEvent(
                event_id=event_id, stream_id=f"account-{account_id}", stream_version=1,
                event_type="AccountOpened", data={"currency": CURRENCY}, metadata={},
                recorded_at=datetime.now(UTC), global_position=1, subject="",
                message_id=event_id, delivery_count=1,
            )  # fmt: skip
            await apply_account_event(connection, store.schema, event)


async def run_phase(
    name: str, assessment: Assessment, account_ids: list[str], args: argparse.Namespace
) -> tuple[float, int]:
    """Assessments per second over `args.seconds` after `args.warmup`; and the refusals."""
    counted = False
    assessments = 0
    refusals = 0
    stop_at = time.perf_counter() + args.warmup + args.seconds

    async def caller() -> None:
        nonlocal assessments, refusals
        while time.perf_counter() < stop_at:
            from_account, to_account = random.sample(account_ids, 2)
            is_approved = await assessment(from_account, to_account)
            if counted:
                assessments += 1
                refusals += not is_approved

    log(f"{name}: warming up {args.warmup:.0f} s, timing {args.seconds:.0f} s")
    async with asyncio.TaskGroup() as group:
        for _ in range(args.callers):
            group.create_task(caller())
        await asyncio.sleep(args.warmup)
        counted = True
        started = time.perf_counter()
    elapsed = time.perf_counter() - started
    return assessments / elapsed, refusals


def baseline(store: EventStore) -> Assessment:
    async def assessment(from_account: str, _: str) -> bool:
        async with store.unit_of_work() as unit:
            await unit.append(f"base-{from_account}", [NewEvent("Decided", {"amount_minor": 1})])
        return True

    return assessment


def in_process(store: EventStore) -> Assessment:
    async def assessment(from_account: str, to_account: str) -> bool:
        async with store.unit_of_work() as unit:
            decision = await assess_movements(
                assess_command(from_account, to_account), unit, LIMITS, datetime.now(UTC)
            )
        return decision.approved

    return assessment


def over_nats(client: CommandClient, service_name: str) -> Assessment:
    async def assessment(from_account: str, to_account: str) -> bool:
        command = assess_command(from_account, to_account)
        decision = await client.send(f"{service_name}.assess", command, Decision)
        return decision.approved

    return assessment


async def benchmark(args: argparse.Namespace, dsn: str, nats_url: str) -> dict[str, float]:
    schema = f"bench_{secrets.token_hex(4)}"
    projections = inline_projections()
    store = await EventStore.open(
        dsn, schema, pool_size=args.callers + 8, inline_projections=projections
    )
    await ensure_table(store)
    plain = EventStore(store.pool, schema)
    figures: dict[str, float] = {}
    try:
        account_ids = [f"bench-{i}" for i in range(args.accounts)]
        log(f"opening {args.accounts} accounts in schema {schema}")
        await open_accounts(store, account_ids)
        figures["baseline"], _ = await run_phase("baseline", baseline(plain), account_ids, args)
        figures["in_process"], figures["in_process_refusals"] = await run_phase(
            "in_process", in_process(store), account_ids, args)
        nc = await connect([nats_url], "bench-risk")
        service_name = f"risk-bench-{secrets.token_hex(3)}"
        service = CommandService(nc, store, name=service_name, version="0.0.0",
                                 max_in_flight=args.callers * 2)
        register_commands(service, LIMITS, lambda: datetime.now(UTC))
        await service.start()
        try:
            client = CommandClient(nc, timeout_s=10.0, max_retries=0)
            figures["nats"], figures["nats_refusals"] = await run_phase(
                "nats", over_nats(client, service_name), account_ids, args)
        finally:
            await service.stop()
            await nc.close()
    finally:
        await store.pool.execute(f"drop schema if exists {schema} cascade")
        await store.close()
    return figures


def report(figures: dict[str, float], args: argparse.Namespace) -> None:
    shape = f"{args.accounts} accounts, {args.callers} callers"
    print(f"baseline_append_per_s: {figures['baseline']:.0f}  ({shape})")
    print(f"in_process_assessments_per_s: {figures['in_process']:.0f}")
    print(f"nats_assessments_per_s: {figures['nats']:.0f}")
    print(f"refusals: in_process {figures['in_process_refusals']:.0f},"
          f" nats {figures['nats_refusals']:.0f}")
    print(f"ratio_in_process/baseline: {figures['in_process'] / figures['baseline']:.2f}")
    print(f"ratio_nats/baseline: {figures['nats'] / figures['baseline']:.2f}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ledger-bench-risk-") as data_dir:
        if not args.dsn or not args.nats:
            log(f"starting embedded servers for what --dsn / --nats do not name, in {data_dir}")
        with servers(Path(data_dir), args.dsn or None, args.nats or None) as (dsn, nats_url):
            figures = asyncio.run(benchmark(args, dsn, nats_url))
    report(figures, args)


if __name__ == "__main__":
    main()
