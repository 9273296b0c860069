"""The account service's invariants, checked on one snapshot of its schema: every account's
events fold (with the domain's own `evolve`) to its balances row, its holds start once and
end once, its events keep the money rules (`account_fold.py`), its entries sum to its
balance, and, per currency, transfers neither make nor destroy money and every pending
debit has its pending credit.

Events are read in stream order through a cursor; accounts are compared with their rows in
batches, so memory holds one batch of accounts, not the store.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from account_service.events import CATEGORY
from account_service.projections import BALANCE_COLUMNS, state_from_row
from eventstore import EventStore
from eventstore._db import Connection
from eventstore.reads import COLUMNS, decode
from ledger.auditing.account_fold import SERVICE, AccountFolder, OpenHold
from ledger.auditing.comparisons import (
    EntriesTotal,
    balances_difference,
    entries_difference,
)
from ledger.auditing.findings import Finding

BATCH_ACCOUNTS: Final = 500
"""Accounts compared with their rows per round trip."""
MAX_ORPHANS_REPORTED: Final = 100
_PREFETCH_ROWS: Final = 2_000

OnEvents = Callable[[int], None]


@dataclass(slots=True)
class AccountsAudit:
    """What the account pass checked and found; `open_holds` go on to the saga check."""

    accounts: int = 0
    events: int = 0
    findings: list[Finding] = field(default_factory=list)
    open_holds: list[OpenHold] = field(default_factory=list)


@dataclass(slots=True)
class _CurrencyTotals:
    transfers_net_minor: int = 0
    pending_debits_minor: int = 0
    pending_credits_minor: int = 0


async def audit_accounts(store: EventStore, on_events: OnEvents | None = None) -> AccountsAudit:
    """Check the account invariants of `store` on one snapshot; `on_events(n)` reports
    progress as batches of accounts are checked."""
    audit = AccountsAudit()
    async with store.pool.acquire() as connection, connection.transaction(
        isolation="repeatable_read", readonly=True
    ):
        account_pass = _AccountPass(connection, store.schema, audit, on_events)
        if not await account_pass.has_read_models():
            audit.findings.append(Finding(SERVICE, None, None, "balances",
                                          f"{store.schema} has no balances or entries table"))
            return audit
        await account_pass.run()
    return audit


class _AccountPass:
    def __init__(
        self, connection: Connection, schema: str, audit: AccountsAudit, on_events: OnEvents | None
    ) -> None:
        self.connection = connection
        self.schema = schema
        self.audit = audit
        self.on_events = on_events
        self.batch: list[AccountFolder] = []
        self.totals: defaultdict[str, _CurrencyTotals] = defaultdict(_CurrencyTotals)
        self.is_every_fold_sound = True

    async def has_read_models(self) -> bool:
        found = await self.connection.fetchval(
            "select to_regclass($1) is not null and to_regclass($2) is not null",
            f"{self.schema}.balances", f"{self.schema}.entries",
        )  # fmt: skip
        return bool(found)

    async def run(self) -> None:
        folder: AccountFolder | None = None
        cursor = self.connection.cursor(
            f"select {COLUMNS} from {self.schema}.events where category = $1"
            " order by stream_id, stream_version",
            CATEGORY,
            prefetch=_PREFETCH_ROWS,
        )
        async for row in cursor:
            if folder is None or folder.stream_id != row["stream_id"]:
                if folder is not None:
                    await self._finished(folder)
                folder = AccountFolder(row["stream_id"])
            try:
                event = decode(row)
            except ValueError as error:  # changed behind the store's back (verify names it)
                folder.add_undecodable(row["stream_version"], str(error))
                continue
            folder.add(event)
        if folder is not None:
            await self._finished(folder)
        await self._check_batch()
        await self._check_orphans()
        self._check_conservation()

    async def _finished(self, folder: AccountFolder) -> None:
        self.batch.append(folder)
        if len(self.batch) >= BATCH_ACCOUNTS:
            await self._check_batch()

    async def _check_batch(self) -> None:
        if not self.batch:
            return
        ids = [folder.account_id for folder in self.batch]
        rows = {
            row["account_id"]: row
            for row in await self.connection.fetch(
                f"select {BALANCE_COLUMNS} from {self.schema}.balances"
                " where account_id = any($1::text[])",
                ids,
            )
        }
        totals = await self._entries_totals(ids)
        for folder in self.batch:
            self._check_account(folder, rows.get(folder.account_id),
                                totals.get(folder.account_id))  # fmt: skip
        events = sum(folder.events for folder in self.batch)
        self.audit.accounts += len(self.batch)
        self.audit.events += events
        self.batch = []
        if self.on_events is not None:
            self.on_events(events)

    def _check_account(self, folder: AccountFolder, row: Any, total: EntriesTotal | None) -> None:
        findings = self.audit.findings
        if folder.finding is not None or folder.state is None:
            self.is_every_fold_sound = False
            if folder.finding is not None:
                findings.append(folder.finding)
            return
        state = folder.state

        def finding(check: str, reason: str) -> Finding:
            return Finding(SERVICE, folder.stream_id, folder.last_version, check, reason)

        if row is None:
            findings.append(finding("balances", "the account has no balances row"))
        else:
            difference = balances_difference(state_from_row(row), state)
            if difference is not None:
                findings.append(finding("balances", difference))
        total = total or EntriesTotal(0, 0, 0, 0, None)
        difference = entries_difference(total, state.posted_minor, folder.movements,
                                         folder.movement_positions)  # fmt: skip
        if difference is not None:
            findings.append(finding("entries", difference))
        self.audit.open_holds.extend(folder.open_holds())
        currency = self.totals[state.currency]
        currency.transfers_net_minor += folder.transfers_net_minor
        currency.pending_debits_minor += state.pending_debits_minor
        currency.pending_credits_minor += state.pending_credits_minor

    async def _entries_totals(self, ids: list[str]) -> dict[str, EntriesTotal]:
        rows = await self.connection.fetch(
            "select account_id, count(*) as entries, sum(amount_minor) as amount,"
            " (array_agg(balance_after_minor order by global_position desc))[1] as last_balance,"
            " sum(global_position) as positions,"
            " min(global_position) filter (where not follows) as unfollowed"
            " from (select account_id, amount_minor, balance_after_minor, global_position,"
            "   balance_after_minor = coalesce(lag(balance_after_minor) over (partition by"
            "   account_id order by global_position), 0) + amount_minor as follows"
            f"  from {self.schema}.entries where account_id = any($1::text[])) as e"
            " group by account_id",
            ids,
        )
        return {row["account_id"]: _entries_total(row) for row in rows}

    async def _check_orphans(self) -> None:
        """Balances rows and entries of accounts that have no events at all."""
        prefix = f"{CATEGORY}-"
        for table in ("balances", "entries"):
            rows = await self.connection.fetch(
                f"select distinct account_id from {self.schema}.{table} as t where not exists"
                f" (select 1 from {self.schema}.events as e where e.stream_id = $1 || t.account_id)"
                " order by account_id limit $2",
                prefix, MAX_ORPHANS_REPORTED,
            )  # fmt: skip
            for row in rows:
                self.audit.findings.append(Finding(
                    SERVICE, f"{prefix}{row['account_id']}", None, table,
                    f"the {table} table has rows for an account that has no events",
                ))  # fmt: skip

    def _check_conservation(self) -> None:
        if not self.is_every_fold_sound:
            return  # an account that does not fold has unknown balances: no sum to check
        for currency, totals in sorted(self.totals.items()):
            if totals.transfers_net_minor != 0:
                self.audit.findings.append(Finding(
                    SERVICE, None, None, "conservation",
                    f"{currency}: posted transfers add up to {totals.transfers_net_minor} minor"
                    " units instead of zero (money made or destroyed)",
                ))  # fmt: skip
            if totals.pending_debits_minor != totals.pending_credits_minor:
                self.audit.findings.append(Finding(
                    SERVICE, None, None, "conservation",
                    f"{currency}: pending debits are {totals.pending_debits_minor} minor units"
                    f" but pending credits {totals.pending_credits_minor}",
                ))  # fmt: skip


def _entries_total(row: Any) -> EntriesTotal:
    return EntriesTotal(
        entries=row["entries"], amount_minor=int(row["amount"]),
        last_balance_minor=row["last_balance"], positions=int(row["positions"]),
        first_unfollowed_position=row["unfollowed"],
    )  # fmt: skip
