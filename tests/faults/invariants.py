"""Quiescence and the ledger's invariants (DESIGN 3), read straight from PostgreSQL and NATS.

The checks read the services' own tables (not their HTTP answers) so that a service that
answers wrongly cannot hide a broken invariant; the accepted transfers are looked up over
HTTP too, since "found" is what a client sees.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

import asyncpg
import nats

from eventstore import EventStore
from eventstore.audit import verify_chains
from tests.faults.cluster import quiet
from tests.faults.harness import SERVICES, Api, LedgerProcesses
from tests.faults.load import SCALES, Accepted

FINAL: Final = frozenset({"completed", "rejected", "failed"})
ACTIVE_SAGAS: Final = ("running", "compensating")
QUIESCENCE_TIMEOUT_S: Final = 90.0
_POLL_S: Final = 0.2
_LOOKUPS_AT_ONCE: Final = 16


@dataclass
class Quiescence:
    """What was still moving, the last time it was looked at."""

    pending_transfers: int = 0
    active_sagas: int = 0
    saga_statuses: Counter[str] = field(default_factory=Counter)


async def wait_quiescent(ledger: LedgerProcesses, timeout_s: float = QUIESCENCE_TIMEOUT_S
                         ) -> float:
    """Seconds until no transfer is pending and no saga runs or compensates; AssertionError
    naming what still moves (and the services' logs) after `timeout_s`."""
    started_s = time.monotonic()
    connection = await asyncpg.connect(ledger.servers.database_url)
    try:
        while True:
            seen = await _look(connection, ledger)
            if seen.pending_transfers == 0 and seen.active_sagas == 0:
                return time.monotonic() - started_s
            if time.monotonic() - started_s > timeout_s:
                raise AssertionError(f"not quiescent after {timeout_s:.0f} s: {seen}\n"
                                     f"{ledger.log_tails()}")  # fmt: skip
            await asyncio.sleep(_POLL_S)
    finally:
        await connection.close()


async def _look(connection: asyncpg.Connection, ledger: LedgerProcesses) -> Quiescence:
    pending = await connection.fetchval(
        f"select count(*) from {ledger.schema('trade')}.settlements where status = 'pending'"
    )
    statuses = Counter({row["status"]: row["count"] for row in await connection.fetch(
        f"select status, count(*) from {ledger.schema('saga')}.saga_runs group by status")})
    active = sum(statuses[status] for status in ACTIVE_SAGAS)
    return Quiescence(pending, active, statuses)


@dataclass
class Findings:
    """What the invariant checks measured, and every violation they found."""

    outcomes: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    events_verified: int = 0
    assets: dict[str, Decimal] = field(default_factory=dict)


async def check_invariants(ledger: LedgerProcesses, accepted: list[Accepted]) -> Findings:
    """Every invariant of a quiescent ledger, and every accepted transfer found and final
    with the money moved exactly when it completed; the violations in `Findings`."""
    findings = Findings()
    connection = await asyncpg.connect(ledger.servers.database_url)
    try:
        await _check_money(connection, ledger, findings)
        await _check_holds_and_sagas(connection, ledger, findings)
        await _check_accepted(connection, ledger, accepted, findings)
    finally:
        await connection.close()
    await _check_chains(ledger, findings)
    await _check_dead_letters(ledger, findings)
    return findings


async def _check_money(
    connection: asyncpg.Connection, ledger: LedgerProcesses, findings: Findings
) -> None:
    """Conservation per asset, entries summing to balances, no available below its floor."""
    account = ledger.schema("account")
    doors = {row["currency"]: row["net"] for row in await connection.fetch(
        f"select b.currency, sum(case e.event_type when 'Deposited'"
        f" then (e.data->>'amount_minor')::numeric else -(e.data->>'amount_minor')::numeric end)"
        f" as net from {account}.events e"
        f" join {account}.balances b on e.stream_id = 'account-' || b.account_id"
        f" where e.event_type in ('Deposited', 'Withdrawn') group by b.currency")}  # fmt: skip
    posted = {row["currency"]: row["posted"] for row in await connection.fetch(
        f"select currency, sum(posted_minor) as posted from {account}.balances"
        " group by currency")}  # fmt: skip
    for currency in sorted(set(doors) | set(posted)):
        net, total = doors.get(currency, 0), posted.get(currency, 0)
        findings.assets[currency] = Decimal(total).scaleb(-SCALES.get(currency, 0))
        if net != total:
            findings.violations.append(
                f"{currency}: balances sum to {total}, deposits - withdrawals = {net}")
    for row in await connection.fetch(
        f"select b.account_id, b.posted_minor, coalesce(sum(e.amount_minor), 0) as entries"
        f" from {account}.balances b left join {account}.entries e using (account_id)"
        " group by b.account_id, b.posted_minor"
        " having b.posted_minor <> coalesce(sum(e.amount_minor), 0)"):  # fmt: skip
        findings.violations.append(f"account {row['account_id']}: balance {row['posted_minor']}"
                                   f" but its entries sum to {row['entries']}")  # fmt: skip
    for row in await connection.fetch(
        f"select account_id, posted_minor - pending_debits_minor as available"
        f" from {account}.balances"
        " where posted_minor - pending_debits_minor < -overdraft_limit_minor"):  # fmt: skip
        findings.violations.append(f"account {row['account_id']}: available {row['available']}")


async def _check_holds_and_sagas(
    connection: asyncpg.Connection, ledger: LedgerProcesses, findings: Findings
) -> None:
    """No hold open for a finished saga, nothing pending on any account, no saga parked."""
    account, saga = ledger.schema("account"), ledger.schema("saga")
    for row in await connection.fetch(
        f"select h.hold_id, h.transfer_id, r.status from {account}.holds h"
        f" join {saga}.saga_runs r on r.saga_id = h.transfer_id"
        " where h.status = 'open' and r.status not in ('running', 'compensating')"):  # fmt: skip
        findings.violations.append(f"hold {row['hold_id']} open, its saga {row['transfer_id']}"
                                   f" is {row['status']}")  # fmt: skip
    for row in await connection.fetch(
        f"select account_id, pending_debits_minor, pending_credits_minor from {account}.balances"
        " where pending_debits_minor <> 0 or pending_credits_minor <> 0"):  # fmt: skip
        findings.violations.append(f"account {row['account_id']} still has pending"
                                   f" {row['pending_debits_minor']}/{row['pending_credits_minor']}")
    for row in await connection.fetch(
        f"select saga_id, status, last_error from {saga}.saga_runs"
        " where status not in ('completed', 'rejected', 'failed')"):  # fmt: skip
        findings.violations.append(f"saga {row['saga_id']} is {row['status']}:"
                                   f" {row['last_error']}")  # fmt: skip


async def _check_accepted(
    connection: asyncpg.Connection, ledger: LedgerProcesses, accepted: list[Accepted],
    findings: Findings,
) -> None:
    """Each 202 is found over HTTP, final, as requested, with its saga agreeing, and money
    moved for it (one debit, one credit of its amount) exactly when it completed."""
    ids = [transfer.transfer_id for transfer in accepted]
    moved = {row["transfer_id"]: row for row in await connection.fetch(
        f"select transfer_id, count(*) as entries, sum(amount_minor) as net,"
        f" max(amount_minor) as credit from {ledger.schema('account')}.entries"
        " where transfer_id = any($1::text[]) group by transfer_id", ids)}  # fmt: skip
    sagas = {row["saga_id"]: row["status"] for row in await connection.fetch(
        f"select saga_id, status from {ledger.schema('saga')}.saga_runs"
        " where saga_id = any($1::text[])", ids)}  # fmt: skip
    slots = asyncio.Semaphore(_LOOKUPS_AT_ONCE)

    async def check(transfer: Accepted) -> None:
        async with slots:
            problem = await _problem_of(ledger.api, transfer, moved.get(transfer.transfer_id),
                                        sagas.get(transfer.transfer_id), findings)  # fmt: skip
        if problem:
            findings.violations.append(f"transfer {transfer.transfer_id}: {problem}")

    await asyncio.gather(*(check(transfer) for transfer in accepted))


async def _problem_of(
    api: Api, transfer: Accepted, moved: Any, saga_status: str | None, findings: Findings
) -> str | None:
    response = await api.get(f"/v1/transfers/{transfer.transfer_id}")
    if response.status_code != 200:
        return f"accepted, then not found: {response.status_code} {response.text}"
    body = response.json()
    status = body["status"]
    findings.outcomes[status if status != "rejected" else f"rejected:{body['reason']}"] += 1
    if status not in FINAL:
        return f"not final: {status}"
    if (body["from_account"], body["to_account"]) != (transfer.from_account, transfer.to_account):
        return f"accounts changed: {body}"
    if Decimal(body["amount"]) != transfer.amount:
        return f"amount changed: {body['amount']} != {transfer.amount}"
    if saga_status != status:
        return f"transfer is {status}, its saga {saga_status}"
    amount_minor = int(transfer.amount.scaleb(SCALES[transfer.currency]))
    if status == "completed":
        if moved is None or (moved["entries"], moved["net"], moved["credit"]) != (
            2, 0, amount_minor
        ):
            return f"completed, but its entries are {dict(moved) if moved else None}"
    elif moved is not None:
        return f"{status}, yet money moved: {dict(moved)}"
    return None


async def _check_chains(ledger: LedgerProcesses, findings: Findings) -> None:
    """Every hash chain of every service's store intact."""
    pool = await asyncpg.create_pool(ledger.servers.database_url, min_size=1, max_size=2)
    try:
        for service in SERVICES:
            report = await verify_chains(EventStore(pool, ledger.schema(service)))
            findings.events_verified += report.events
            if not report.is_intact:
                findings.violations.append(f"{service}: hash chain broken: {report.first_break}")
    finally:
        await pool.close()


async def _check_dead_letters(ledger: LedgerProcesses, findings: Findings) -> None:
    """No consumer gave up on a message (each would be a step of the system never taken)."""
    stream = ledger.env.get("LEDGER_EVENTS_STREAM", "LEDGER_EVENTS")
    nc = await nats.connect(servers=ledger.servers.nats_url.split(","),
                            max_reconnect_attempts=2, error_cb=quiet)  # fmt: skip
    try:
        info = await nc.jetstream().stream_info(f"{stream}_DEAD")
        if info.state.messages:
            findings.violations.append(f"{info.state.messages} messages dead-lettered")
    finally:
        await nc.close()
