"""Transfers end to end over HTTP: completed transfers per second and request-to-final latency.

    python benchmarks/transfers.py [--dsn DSN] [--nats URL] [--accounts 1000] [--clients 64]
                                   [--seconds 15] [--warmup 2] [--baseline-seconds 5]
                                   [--per-service] [--logs DIR]

Starts the whole system with `ledger up --no-embedded` in a process of its own (every
service in one process, on a free local port), or with `--per-service` one `ledger serve
<service>` process per service as production runs them (`system_under_test.py`), against
fresh schemas `bench<random>_<service>` dropped at the end; the clients run in this
process, so their work competes with the system's for the cores, not for its event loop.
They use a lean HTTP/1.1 client (`lean_http.py`, docs/benchmark-clients.md) for the timed
requests. Then, through HTTP only:

  1. opens `--accounts` accounts and funds each with a deposit, then waits until the risk
     service has seen every one (it learns accounts from account events over NATS);
  2. baseline: `--clients` clients each repeat a 0.01 deposit into a random account for
     `--baseline-seconds`: the cost of one HTTP write without a saga;
  3. transfers: `--clients` clients each repeat, for `--warmup` + `--seconds`,
     `POST /v1/transfers` (a unique Idempotency-Key, a random amount between two random
     distinct accounts) then `GET /v1/transfers/{id}?wait=30` until the status is final;
     the latency is from sending the POST to receiving the final status;
  4. waits (bounded by `--final-timeout`) until no transfer is pending, and checks that the
     sum of every balance equals the sum of the deposits and that no hold is left open.

The DSN comes from `--dsn` (else LEDGER_BENCH_DATABASE_URL), the NATS URL from `--nats`
(else LEDGER_BENCH_NATS_URL); without them embedded servers are started in a temporary
directory (the `embedded` extra). A shared NATS server must not serve another ledger at the
same time: the saga's commands (`account.reserve`, ...) are found by name on the server.
Nor may its events stream hold another ledger's events: subjects are `ledger.<service>...`
for every ledger, so this run's saga starter would start sagas for that ledger's transfers
and the figures would count their work. The run refuses such a stream (exit 2) unless
`--purge-events` allows it to purge `ledger.>` from it first; when it found none, it purges
its own events at the end, so the next run finds the stream clean.
Figures go to stdout, one per line with the goal beside; progress goes to stderr. Besides
the rates, a run prints the CPU each process of this machine (the ledger's processes,
PostgreSQL, nats-server, the clients) used per completed transfer in the timed window: on a shared
machine a steadier figure than transfers/s for comparing two versions (in several
alternating pairs: it moves too), and the transfers per second the machine's cores allow
at that cost, which is where the run's throughput ends up.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import asyncpg
import httpx
import nats
import nats.js.errors
from lean_http import LeanConnection, ProtocolError
from pydantic import SecretStr
from system_under_test import running

from ledger.auth import Scope, TokenSigner
from ledger.bus import EVENTS_SUBJECT_PREFIX
from ledger.embedded import servers
from ledger.logs import configure_logging
from ledger.services import available_services
from ledger.settings import Settings

DSN_ENV: Final = "LEDGER_BENCH_DATABASE_URL"
NATS_ENV: Final = "LEDGER_BENCH_NATS_URL"
CURRENCY: Final = "USD"
FUNDING: Final = Decimal("1000000.00")
BASELINE_DEPOSIT: Final = Decimal("0.01")
FINAL: Final = frozenset({"completed", "rejected", "failed"})
WAIT_S: Final = 30
REQUEST_TIMEOUT_S: Final = WAIT_S + 30
"""A timed request's bound: a `?wait=30` read plus the server's slowest answer."""
REQUEST_ATTEMPTS: Final = 5
GOAL_PER_S: Final = 500.0
GOAL_P99_MS: Final = 250.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get(DSN_ENV))
    parser.add_argument("--nats", default=os.environ.get(NATS_ENV))
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--baseline-seconds", type=float, default=5.0)
    parser.add_argument("--per-service", action="store_true",
                        help="Run each service in a process of its own (`ledger serve"
                             " <service>`), as production does, not `ledger up`.")  # fmt: skip
    parser.add_argument("--logs", type=Path, default=None,
                        help="Keep the ledger processes' logs in this directory.")
    parser.add_argument("--final-timeout", type=float, default=60.0,
                        help="Longest wait, after the load, for every transfer to be final.")
    parser.add_argument("--purge-events", action="store_true",
                        help="Purge other ledgers' events (`ledger.>`) from the events stream"
                             " first, instead of refusing to run beside them.")  # fmt: skip
    return parser.parse_args(argv)


Connect = Callable[[str], LeanConnection]
"""Opens a client's own keep-alive connection to a service of the system under test."""


class SharedStream(Exception):
    """The events stream holds another ledger's events, and --purge-events was not given."""


@dataclass
class Figures:
    """What the run measured."""

    deposits_per_s: float = 0.0
    deposit_latencies_ms: list[float] = field(default_factory=list)
    deposited: Decimal = Decimal(0)
    transfers_per_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    http_errors: Counter[str] = field(default_factory=Counter)
    requested: int = 0
    unfinished: int = 0
    left_pending: int = 0
    total_balance: Decimal = Decimal(0)
    open_pending: Decimal = Decimal(0)
    parked_sagas: int = 0
    step_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    drain_s: float = 0.0
    completed_in_window: int = 0
    cpu_s: dict[str, float] = field(default_factory=dict)
    """CPU seconds of each process group of this machine during the timed window."""


CPU_GROUPS: Final = ("postgres", "nats-server")
"""Processes of this machine, by name, whose CPU a run reports besides the ledger's own."""


def cpu_snapshot(ledger_pids: Collection[int]) -> dict[str, float]:
    """CPU seconds (user + system) so far of the ledger's processes, of every process of
    this machine named in CPU_GROUPS (servers elsewhere count nothing), and of this one."""
    ticks = os.sysconf("SC_CLK_TCK")
    totals = dict.fromkeys(("ledger", *CPU_GROUPS, "clients"), 0.0)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, tail = stat.read_text().rsplit(")", 1)
        except OSError:
            continue  # the process ended meanwhile
        fields = tail.split()
        used = (int(fields[11]) + int(fields[12])) / ticks
        name = head.split("(", 1)[1]
        if int(stat.parent.name) in ledger_pids:
            totals["ledger"] += used
        elif name in CPU_GROUPS:
            totals[name] += used
    totals["clients"] = time.process_time()
    return totals


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of `values` (0 when empty)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, round(fraction * len(ordered) + 0.5))
    return ordered[min(rank, len(ordered)) - 1]


async def parallel(count: int, work: list[Any], each: Any) -> None:
    """Run `each(item)` over `work`, `count` at a time."""
    queue = list(work)

    async def worker() -> None:
        while queue:
            await each(queue.pop())

    async with asyncio.TaskGroup() as group:
        for _ in range(count):
            group.create_task(worker())


def expect(response: httpx.Response, status: int) -> dict[str, Any]:
    if response.status_code != status:
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path} answered"
            f" {response.status_code}: {response.text[:300]}"
        )
    body: dict[str, Any] = response.json()
    return body


async def open_accounts(
    client: httpx.AsyncClient, owner: str, count: int, clients: int
) -> list[str]:
    """Open and fund `count` accounts of `owner`; their ids."""
    ids: list[str] = []

    async def open_one(_: int) -> None:
        account = expect(
            await client.post("/v1/accounts", json={"owner": owner, "currency": CURRENCY}), 201
        )
        expect(await client.post(
            f"/v1/accounts/{account['id']}/deposits", json={"amount": str(FUNDING)},
            headers={"Idempotency-Key": uuid.uuid4().hex},
        ), 201)  # fmt: skip
        ids.append(account["id"])

    await parallel(clients, list(range(count)), open_one)
    return ids


async def wait_for_risk(client: httpx.AsyncClient, account_ids: list[str], timeout_s: float
                        ) -> None:
    """Until the risk service knows every account (else transfers are `unknown_account`)."""
    deadline = time.perf_counter() + timeout_s
    unknown = list(account_ids)
    missing: list[str] = []

    async def look(account_id: str) -> None:
        response = await client.get(f"/v1/risk/accounts/{account_id}")
        if response.status_code != 200:
            missing.append(account_id)

    while unknown:
        missing.clear()
        await parallel(32, unknown, look)
        unknown = list(missing)
        if unknown:
            log(f"  risk has not seen {len(unknown)} accounts yet")
            if time.perf_counter() > deadline:
                raise RuntimeError(f"risk never learned {len(unknown)} accounts")
            await asyncio.sleep(2)


async def run_deposits(
    connect: Connect, account_ids: list[str], args: argparse.Namespace, figures: Figures
) -> None:
    """The baseline: one HTTP write (a deposit) per request, no saga."""
    stop_at = time.perf_counter() + args.baseline_seconds
    done = 0

    async def depositor() -> None:
        nonlocal done
        async with connect("account") as http:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                status, _ = await answered(
                    http, figures, "deposit", "POST",
                    f"/v1/accounts/{random.choice(account_ids)}/deposits",
                    {"amount": str(BASELINE_DEPOSIT), "reference": "bench"},
                    {"Idempotency-Key": uuid.uuid4().hex},
                )
                if status == 201:
                    figures.deposited += BASELINE_DEPOSIT
                    done += 1
                    figures.deposit_latencies_ms.append((time.perf_counter() - started) * 1000)
                else:
                    figures.http_errors[f"deposit {status}"] += 1

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(args.clients):
            group.create_task(depositor())
    figures.deposits_per_s = done / (time.perf_counter() - started)


async def answered(
    http: LeanConnection, figures: Figures, what: str, method: str, path: str,
    json: Any = None, headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """The answer to a request, sent again as it was (its Idempotency-Key too, so a write
    still takes effect once) after a connection that broke or an answer that never came;
    each such failure is counted in `http_errors`. Raises after REQUEST_ATTEMPTS of them."""
    attempt = 1
    while True:
        try:
            return await http.request(method, path, json, headers, timeout_s=REQUEST_TIMEOUT_S)
        except (TimeoutError, ProtocolError, OSError) as error:
            figures.http_errors[f"{what} {type(error).__name__}"] += 1
            if attempt == REQUEST_ATTEMPTS:
                raise
        await asyncio.sleep(0.1 * attempt)
        attempt += 1


def record_steps(transfer: dict[str, Any], figures: Figures) -> None:
    """Time from the request to the saga's first step, between steps, and after the last."""
    previous = datetime.fromisoformat(transfer["created_at"])
    previous_name = "requested"
    for step in sorted(transfer["steps"], key=lambda s: s["seq"]):
        at = datetime.fromisoformat(step["at"])
        name = f"{previous_name} -> {step['step']}:{step['outcome']}"
        figures.step_ms[name].append((at - previous).total_seconds() * 1000)
        previous, previous_name = at, f"{step['step']}:{step['outcome']}"
    updated = datetime.fromisoformat(transfer["updated_at"])
    figures.step_ms[f"{previous_name} -> final status"].append(
        (updated - previous).total_seconds() * 1000
    )


async def run_transfers(
    connect: Connect, account_ids: list[str], args: argparse.Namespace,
    figures: Figures, ledger_pids: Collection[int],
) -> None:
    """Closed-loop clients: request a transfer, wait for its final status, again; and the CPU
    every process used in the timed window."""
    begin = time.perf_counter()
    count_from = begin + args.warmup
    stop_at = count_from + args.seconds
    final_deadline = stop_at + args.final_timeout
    completed_in_window = 0

    async def transfer_once(http: LeanConnection) -> None:
        nonlocal completed_in_window
        from_account, to_account = random.sample(account_ids, 2)
        amount = Decimal(random.randint(1, 10_000)) / 100
        started = time.perf_counter()
        status, body = await answered(
            http, figures, "transfer POST", "POST", "/v1/transfers",
            {"from_account": from_account, "to_account": to_account, "amount": str(amount),
             "currency": CURRENCY},
            {"Idempotency-Key": uuid.uuid4().hex},
        )  # fmt: skip
        if status != 202:
            figures.http_errors[f"transfer POST {status}"] += 1
            return
        counted = started >= count_from
        if counted:
            figures.requested += 1
        transfer_path = f"/v1/transfers/{body['id']}?wait={WAIT_S}"
        while True:
            status, transfer = await answered(http, figures, "transfer GET", "GET",
                                              transfer_path)  # fmt: skip
            if status != 200:
                figures.http_errors[f"transfer GET {status}"] += 1
                await asyncio.sleep(0.1)
            elif transfer["status"] in FINAL:
                break
            if time.perf_counter() > final_deadline:
                if counted:
                    figures.unfinished += 1
                return
        finished = time.perf_counter()
        if not counted:
            return
        figures.outcomes[transfer["status"]] += 1
        if transfer["reason"]:
            figures.reasons[transfer["reason"]] += 1
        figures.latencies_ms.append((finished - started) * 1000)
        if transfer["status"] == "completed":
            record_steps(transfer, figures)
            if finished <= stop_at:
                completed_in_window += 1

    async def transferrer() -> None:
        async with connect("trade") as http:
            while time.perf_counter() < stop_at:
                await transfer_once(http)

    async def measure_cpu() -> None:
        if sys.platform != "linux":
            return  # not Linux: no figure rather than a wrong one
        await asyncio.sleep(count_from - time.perf_counter())
        before = cpu_snapshot(ledger_pids)
        await asyncio.sleep(stop_at - time.perf_counter())
        after = cpu_snapshot(ledger_pids)
        figures.cpu_s = {name: after[name] - before[name] for name in after}

    log(f"transfers: warming up {args.warmup:.0f} s, timing {args.seconds:.0f} s")
    async with asyncio.TaskGroup() as group:
        group.create_task(measure_cpu())
        for _ in range(args.clients):
            group.create_task(transferrer())
    figures.drain_s = time.perf_counter() - stop_at
    figures.completed_in_window = completed_in_window
    figures.transfers_per_s = completed_in_window / args.seconds


async def settle_and_check(
    client: httpx.AsyncClient, owner: str, args: argparse.Namespace, figures: Figures
) -> None:
    """Wait until no transfer is pending; then sum every balance and every open hold."""
    deadline = time.perf_counter() + args.final_timeout
    while True:
        pending = expect(await client.get(
            "/v1/transfers", params={"status": "pending", "limit": 500}), 200)["items"]
        figures.left_pending = len(pending)
        if not pending or time.perf_counter() > deadline:
            break
        await asyncio.sleep(0.5)
    parked = expect(await client.get(
        "/v1/sagas", params={"status": "requires_intervention", "limit": 500}), 200)["items"]
    figures.parked_sagas = len(parked)
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"owner": owner, "limit": 500}
        if cursor:
            params["cursor"] = cursor
        page = expect(await client.get("/v1/accounts", params=params), 200)
        for account in page["items"]:
            figures.total_balance += Decimal(account["balance"])
            figures.open_pending += Decimal(account["pending_debits"])
            figures.open_pending += Decimal(account["pending_credits"])
        cursor = page["next"]
        if not cursor:
            break


async def serve(
    settings: Settings, args: argparse.Namespace, owner: str, data_dir: Path
) -> Figures:
    figures = Figures()
    log_dir = args.logs or data_dir
    log_dir.mkdir(parents=True, exist_ok=True)
    async with running(settings, data_dir, log_dir, per_service=args.per_service) as system:
        # Idle connections are dropped after 1 s, before uvicorn's 5 s keep-alive closes them
        # under a request about to be sent (an httpx.ReadError).
        limits = httpx.Limits(max_connections=args.clients + 8,
                              max_keepalive_connections=args.clients + 8, keepalive_expiry=1.0)
        token = TokenSigner.from_settings(settings).issue("benchmark", [Scope.ADMIN],
                                                          ttl_s=24 * 3600)  # fmt: skip
        authorization = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=system.url, transport=system.transport(limits),
                                     timeout=REQUEST_TIMEOUT_S, headers=authorization) as client:
            log(f"opening and funding {args.accounts} accounts")
            started = time.perf_counter()
            account_ids = await open_accounts(client, owner, args.accounts, args.clients)
            await wait_for_risk(client, account_ids, timeout_s=args.final_timeout * 3)
            log(f"  {time.perf_counter() - started:.1f} s")
            log(f"baseline: HTTP deposits for {args.baseline_seconds:.0f} s")

            def connect(service: str) -> LeanConnection:
                return LeanConnection(system.host, system.ports[service], authorization)

            await run_deposits(connect, account_ids, args, figures)
            await run_transfers(connect, account_ids, args, figures, system.pids)
            log("waiting until every transfer is final, then checking the balances")
            await settle_and_check(client, owner, args, figures)
            figures.deposited += FUNDING * len(account_ids)
    return figures


async def claim_events_stream(settings: Settings, nats_url: str, purge: bool) -> None:
    """Make sure the events stream holds no event on `ledger.>` before the run: purge them
    when `purge`, else raise SharedStream naming how many there are."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        subjects = f"{EVENTS_SUBJECT_PREFIX}.>"
        try:
            info = await js.stream_info(settings.events_stream, subjects_filter=subjects)
        except nats.js.errors.NotFoundError:
            return  # the system creates it
        held = sum((info.state.subjects or {}).values())
        if held and not purge:
            raise SharedStream(
                f"stream {settings.events_stream} on {nats_url} already holds {held} events on"
                f" {subjects} (another ledger's, or an earlier run's); this run's saga starter"
                f" would start sagas for their transfers. Use a NATS server of this run alone"
                f" (leave --nats unset for an embedded one) or pass --purge-events."
            )
        if held:
            log(f"purging {held} events on {subjects} from {settings.events_stream}")
            await js.purge_stream(settings.events_stream, subject=subjects)
    finally:
        await nc.close()


async def drop(settings: Settings, dsn: str, nats_url: str) -> None:
    """Drop the run's schemas, its durable consumers (they outlive a host by design) and its
    events (the stream held none of another ledger's: `claim_events_stream`)."""
    connection = await asyncpg.connect(dsn)
    try:
        for service in available_services():
            await connection.execute(
                f"drop schema if exists {settings.schema_for(service)} cascade")
    finally:
        await connection.close()
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for info in await js.consumers_info(settings.events_stream):
            if info.name and info.name.startswith(settings.schema_prefix):
                await js.delete_consumer(settings.events_stream, info.name)
        await js.purge_stream(settings.events_stream, subject=f"{EVENTS_SUBJECT_PREFIX}.>")
    finally:
        await nc.close()


async def benchmark(
    args: argparse.Namespace, dsn: str, nats_url: str, data_dir: Path
) -> Figures:
    settings = Settings(
        database_url=dsn, nats_url=nats_url, schema_prefix=f"bench{secrets.token_hex(4)}_",
        log_level="WARNING", log_json=False,
        # Tokens are checked as in production; one client sends as fast as it can, which no
        # per-token rate limit would allow.
        auth_jwt_secret=SecretStr(secrets.token_urlsafe(32)), rate_limit_per_s=0,
    )  # fmt: skip
    configure_logging(settings.log_level, as_json=settings.log_json)
    log(f"schemas {settings.schema_prefix}<service>")
    await claim_events_stream(settings, nats_url, args.purge_events)
    try:
        return await serve(settings, args, f"bench-{secrets.token_hex(4)}", data_dir)
    finally:
        await drop(settings, dsn, nats_url)


def report(figures: Figures, args: argparse.Namespace) -> None:
    topology = "ledger serve per service" if args.per_service else "ledger up"
    shape = (f"{args.accounts} accounts, {args.clients} clients, {args.seconds:.0f} s,"
             f" {topology}")  # fmt: skip
    latencies = figures.latencies_ms
    p50, p95, p99 = (percentile(latencies, f) for f in (0.50, 0.95, 0.99))
    unchanged = figures.total_balance == figures.deposited
    print(f"transfers_completed_per_s: {figures.transfers_per_s:.0f}"
          f"  (goal >= {GOAL_PER_S:.0f}; {shape})")
    print(f"latency_ms p50/p95/p99: {p50:.0f}/{p95:.0f}/{p99:.0f}"
          f"  (goal p99 < {GOAL_P99_MS:.0f}; request to final status)")
    outcomes = ", ".join(f"{name} {figures.outcomes[name]}"
                         for name in ("completed", "rejected", "failed"))
    print(f"outcomes: {outcomes}, unfinished {figures.unfinished}"
          f"  (of {figures.requested} requested after warmup; goal: all completed)")
    if figures.reasons:
        print(f"reasons: {dict(figures.reasons)}")
    if figures.http_errors:
        print(f"http_errors: {dict(figures.http_errors)}  (goal: none)")
    print(f"total_balance_unchanged: {str(unchanged).lower()}"
          f"  (sum of balances {figures.total_balance} vs deposits {figures.deposited})")
    print(f"open_holds_after: {figures.open_pending}  (goal 0)")
    print(f"pending_after_drain: {figures.left_pending}, parked_sagas: {figures.parked_sagas}"
          f"  (goal 0, 0; in-flight drained in {figures.drain_s:.1f} s)")
    d50, d99 = (percentile(figures.deposit_latencies_ms, f) for f in (0.50, 0.99))
    print(f"baseline_http_deposits_per_s: {figures.deposits_per_s:.0f}"
          f"  (p50/p99 {d50:.0f}/{d99:.0f} ms; one HTTP write, no saga)")
    if figures.deposits_per_s:
        print(f"ratio_transfers/deposits: {figures.transfers_per_s / figures.deposits_per_s:.2f}")
    if figures.completed_in_window and figures.cpu_s:
        # Steadier than transfers/s on a shared machine: compare changes by this first.
        per = {name: seconds * 1e3 / figures.completed_in_window
               for name, seconds in figures.cpu_s.items()}  # fmt: skip
        shares = ", ".join(f"{name} {ms:.1f}" for name, ms in per.items())
        total_ms = sum(per.values())
        print(f"cpu_ms_per_transfer: {total_ms:.1f}  ({shares}; processes of this"
              " machine in the timed window)")
        cores = len(os.sched_getaffinity(0))
        if total_ms > 0:
            print(f"cpu_ceiling_transfers_per_s: {cores * 1e3 / total_ms:.0f}  ({cores} cores"
                  f" / {total_ms:.1f} ms: what this machine's CPU allows at this cost per"
                  f" transfer; the goal needs {cores * 1e3 / GOAL_PER_S:.0f} ms or less)")
    if figures.step_ms:
        print("saga_timeline_ms (completed transfers, server clocks; mean / p99):")
        for name, values in figures.step_ms.items():
            print(f"  {name}: {statistics.fmean(values):.0f} / {percentile(values, 0.99):.0f}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ledger-bench-transfers-") as data_dir:
        if not args.dsn or not args.nats:
            log(f"starting embedded servers for what --dsn / --nats do not name, in {data_dir}")
        with servers(Path(data_dir), args.dsn or None, args.nats or None) as (dsn, nats_url):
            try:
                figures = asyncio.run(benchmark(args, dsn, nats_url, Path(data_dir)))
            except SharedStream as refusal:
                log(f"transfers.py: {refusal}")
                sys.exit(2)
    report(figures, args)


if __name__ == "__main__":
    main()
