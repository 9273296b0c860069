"""Account saga commands: reserve+post pairs per second, with a plain-append baseline.

    python benchmarks/accounts.py [--dsn DSN] [--nats URL] [--accounts 1000] [--callers 32]
                                  [--seconds 5] [--warmup 1]

`--callers` tasks each repeat a transfer between two random distinct accounts out of
`--accounts` (funded so that nothing is refused): reserve (debit hold + pending credit, one
transaction over two streams), then post. Phases, against one fresh schema `bench_<random>`
dropped at the end:

  (a) baseline: the same writes without the account service: per pair two transactions,
      each a plain `append` of one event to each of two streams (no projections, no rules);
  (b) in_process: the command handlers called directly, each in `store.unit_of_work()`
      (the account's load, lock, rules, appends and inline balances/entries projections);
  (c) nats: the same through `CommandService` and `CommandClient` over NATS (adds the
      request/reply round trips and the recorded reply of each command).

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
from pathlib import Path
from typing import Final

from account_service import repository
from account_service.app import AccountService
from account_service.commands import post_legs, register_commands, reserve_legs
from account_service.contracts import Leg, LegsDone, PostLegs, ReserveLegs
from account_service.domain import deposit, open_account
from eventstore import EventStore, NewEvent, TransientConflict
from ledger.bus import connect
from ledger.commands import CommandClient, CommandRefused, CommandService
from ledger.embedded import servers
from ledger.money import Assets

DSN_ENV: Final = "LEDGER_BENCH_DATABASE_URL"
NATS_ENV: Final = "LEDGER_BENCH_NATS_URL"
FUNDING_MINOR: Final = 10**12
CURRENCY: Final = "USD"

Pair = Callable[[str, str], Awaitable[None]]


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


def transfer_legs(from_account: str, to_account: str) -> tuple[Leg, ...]:
    return (Leg(leg_id="l1", from_account=from_account, to_account=to_account,
                amount_minor=random.randint(1, 100), currency=CURRENCY),)


async def open_accounts(store: EventStore, account_ids: list[str], callers: int) -> None:
    """Open and fund every account, `callers` at a time."""
    queue = list(account_ids)

    async def opener() -> None:
        while queue:
            account_id = queue.pop()
            async with store.unit_of_work() as unit:
                events = open_account(None, account_id, "bench", CURRENCY, 0)
                await repository.save(unit, None, account_id, events)
            async with store.unit_of_work() as unit:
                await repository.decide_and_save(
                    unit, account_id, lambda state: deposit(state, FUNDING_MINOR, "f", None)
                )

    async with asyncio.TaskGroup() as group:
        for _ in range(callers):
            group.create_task(opener())


async def run_phase(
    name: str, pair: Pair, account_ids: list[str], args: argparse.Namespace
) -> tuple[float, int]:
    """Pairs per second over `args.seconds` after `args.warmup`; and the refusals seen."""
    counted = False
    pairs = 0
    refusals = 0
    stop_at = time.perf_counter() + args.warmup + args.seconds

    async def caller() -> None:
        nonlocal pairs, refusals
        while time.perf_counter() < stop_at:
            from_account, to_account = random.sample(account_ids, 2)
            try:
                await pair(from_account, to_account)
            except CommandRefused:
                refusals += 1
                continue
            if counted:
                pairs += 1

    log(f"{name}: warming up {args.warmup:.0f} s, timing {args.seconds:.0f} s")
    async with asyncio.TaskGroup() as group:
        for _ in range(args.callers):
            group.create_task(caller())
        await asyncio.sleep(args.warmup)
        counted = True
        started = time.perf_counter()
    elapsed = time.perf_counter() - started
    return pairs / elapsed, refusals


def baseline_pair(store: EventStore) -> Pair:
    """Two transactions of one plain append to each of two streams: the writes alone."""

    async def pair(from_account: str, to_account: str) -> None:
        for event_type in ("HoldPlaced", "HoldPosted"):
            while True:  # appends race on a stream without its lock: run again, as writers do
                try:
                    async with store.unit_of_work() as unit:
                        for account_id in sorted((from_account, to_account)):
                            event = NewEvent(event_type, {"amount_minor": 1})
                            await unit.append(f"base-{account_id}", [event])
                    break
                except TransientConflict:
                    continue

    return pair


def in_process_pair(store: EventStore, assets: Assets) -> Pair:
    async def pair(from_account: str, to_account: str) -> None:
        transfer_id = uuid.uuid4().hex
        legs = transfer_legs(from_account, to_account)
        async with store.unit_of_work() as unit:
            await reserve_legs(
                ReserveLegs(command_id=uuid.uuid4(), transfer_id=transfer_id, legs=legs),
                unit, assets,
            )
        async with store.unit_of_work() as unit:
            await post_legs(
                PostLegs(command_id=uuid.uuid4(), transfer_id=transfer_id, legs=legs), unit
            )

    return pair


def nats_pair(client: CommandClient, service_name: str) -> Pair:
    async def pair(from_account: str, to_account: str) -> None:
        transfer_id = uuid.uuid4().hex
        legs = transfer_legs(from_account, to_account)
        reserve = ReserveLegs(command_id=uuid.uuid4(), transfer_id=transfer_id, legs=legs)
        await client.send(f"{service_name}.reserve", reserve, LegsDone)
        post = PostLegs(command_id=uuid.uuid4(), transfer_id=transfer_id, legs=legs)
        await client.send(f"{service_name}.post", post, LegsDone)

    return pair


async def benchmark(args: argparse.Namespace, dsn: str, nats_url: str) -> dict[str, float]:
    schema = f"bench_{secrets.token_hex(4)}"
    projections = AccountService().inline_projections()
    store = await EventStore.open(
        dsn, schema, pool_size=args.callers + 8, inline_projections=projections
    )
    plain = EventStore(store.pool, schema)
    assets = Assets()
    figures: dict[str, float] = {}
    try:
        account_ids = [f"bench-{i}" for i in range(args.accounts)]
        log(f"opening {args.accounts} accounts in schema {schema}")
        await open_accounts(store, account_ids, args.callers)
        figures["baseline"], _ = await run_phase(
            "baseline", baseline_pair(plain), account_ids, args)
        figures["in_process"], refused = await run_phase(
            "in_process", in_process_pair(store, assets), account_ids, args)
        figures["in_process_refusals"] = refused
        nc = await connect([nats_url], "bench-accounts")
        service_name = f"account-bench-{secrets.token_hex(3)}"
        service = CommandService(nc, store, name=service_name, version="0.0.0",
                                 max_in_flight=args.callers * 2)
        register_commands(service, assets)
        await service.start()
        try:
            client = CommandClient(nc, timeout_s=10.0, max_retries=0)
            figures["nats"], refused = await run_phase(
                "nats", nats_pair(client, service_name), account_ids, args)
            figures["nats_refusals"] = refused
        finally:
            await service.stop()
            await nc.close()
    finally:
        await store.pool.execute(f"drop schema if exists {schema} cascade")
        await store.close()
    return figures


def report(figures: dict[str, float], args: argparse.Namespace) -> None:
    shape = f"{args.accounts} accounts, {args.callers} callers"
    print(f"baseline_append_pairs_per_s: {figures['baseline']:.0f}  ({shape})")
    print(f"in_process_reserve_post_pairs_per_s: {figures['in_process']:.0f}")
    print(f"nats_reserve_post_pairs_per_s: {figures['nats']:.0f}")
    print(f"refusals: in_process {figures['in_process_refusals']:.0f},"
          f" nats {figures['nats_refusals']:.0f}")
    print(f"ratio_in_process/baseline: {figures['in_process'] / figures['baseline']:.2f}")
    print(f"ratio_nats/baseline: {figures['nats'] / figures['baseline']:.2f}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ledger-bench-accounts-") as data_dir:
        if not args.dsn or not args.nats:
            log(f"starting embedded servers for what --dsn / --nats do not name, in {data_dir}")
        with servers(Path(data_dir), args.dsn or None, args.nats or None) as (dsn, nats_url):
            figures = asyncio.run(benchmark(args, dsn, nats_url))
    report(figures, args)


if __name__ == "__main__":
    main()
