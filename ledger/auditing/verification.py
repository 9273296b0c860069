"""`ledger audit verify`: every hash chain recomputed, then the store's invariants.

Per service: its chains (and so its gap-free versions and stream heads). For the account
service also the account invariants (`accounts.py`) and, with the saga's log, that no hold
outlives its saga (`holds.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from eventstore import EventStore, verify_chains
from ledger.auditing.accounts import audit_accounts
from ledger.auditing.findings import Finding, chain_finding
from ledger.auditing.holds import audit_open_holds
from ledger.auditing.stores import AuditStores

OnEvents = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class ServiceCheck:
    """What was checked of one service."""

    service: str
    schema: str
    streams: int
    events: int


@dataclass(slots=True)
class VerifyReport:
    """Everything checked, and every break found (chains first, then invariants)."""

    services: list[ServiceCheck] = field(default_factory=list)
    accounts: int = 0
    missing: dict[str, str] = field(default_factory=dict)
    """Services asked for whose schema holds no event store -> that schema."""
    findings: list[Finding] = field(default_factory=list)

    @property
    def is_clean(self) -> bool:
        """True when nothing breaks."""
        return not self.findings

    @property
    def streams(self) -> int:
        """Streams checked, all services."""
        return sum(check.streams for check in self.services)

    @property
    def events(self) -> int:
        """Events checked, all services."""
        return sum(check.events for check in self.services)


async def events_to_check(stores: AuditStores, services: Sequence[str]) -> tuple[int, int]:
    """How many events verifying `services` reads: all of them for the chains, and the
    account events for the account invariants."""
    chain_events = account_events = 0
    for service in services:
        store = stores.get(service)
        if store is None:
            continue
        chain_events += await _count_events(store)
        if service == "account":
            account_events = await _count_events(store, "account")
    return chain_events, account_events


async def verify_stores(
    stores: AuditStores,
    services: Sequence[str],
    on_chain_events: OnEvents | None = None,
    on_account_events: OnEvents | None = None,
) -> VerifyReport:
    """Verify the chains of `services`, and the account invariants when account is among
    them; the callbacks report progress in events checked by each pass."""
    report = VerifyReport(missing={s: stores.missing[s] for s in services if s in stores.missing})
    chain_findings: list[Finding] = []
    invariant_findings: list[Finding] = []
    for service in services:
        store = stores.get(service)
        if store is None:
            continue
        chains = await verify_chains(store, on_events=on_chain_events)
        report.services.append(ServiceCheck(service, store.schema, chains.streams, chains.events))
        chain_findings.extend(chain_finding(service, found) for found in chains.breaks)
        if service == "account":
            accounts = await audit_accounts(store, on_account_events)
            report.accounts = accounts.accounts
            invariant_findings.extend(accounts.findings)
            sagas = stores.get("saga")
            if sagas is not None:
                invariant_findings.extend(
                    await audit_open_holds(store, sagas, accounts.open_holds)
                )
    report.findings = chain_findings + invariant_findings
    return report


async def _count_events(store: EventStore, category: str | None = None) -> int:
    """Events of the store (of one category): the sum of its streams' versions, cheap."""
    where = "" if category is None else "where stream_id like $1"
    arguments = [] if category is None else [f"{category}-%"]
    count = await store.pool.fetchval(
        f"select coalesce(sum(version), 0) from {store.schema}.streams {where}", *arguments
    )
    return int(count)
