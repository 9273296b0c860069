"""One fault test's shape: load, a fault at a random moment, the heal, quiescence, checks.

`under_load` runs it and returns what it measured; the test asserts on the findings and
prints the measurement, so every run shows what was injected and how the system took it.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from typing import Final

import asyncpg

from tests.faults.harness import LedgerProcesses
from tests.faults.invariants import Findings, check_invariants, wait_quiescent
from tests.faults.load import Accepted, TransferLoad

Step = Callable[[], Awaitable[str]]
"""Injects or heals a fault; returns what it did, in words."""


WARM_UP_S: Final = (1.0, 2.5)
"""The fault comes at a random moment in this range after the load began."""
AFTER_HEAL_S: Final = 2.5
"""The load goes on this long after the fault healed: the system must take it."""
RATE_PER_S: Final = 12.0
MAX_ACCEPTED: Final = 90
"""A bound on each part of a test's load (before and after the heal): a slow restart on a
loaded machine must not pile up more."""
MAX_REQUESTS: Final = 1_000
"""A bound on requests, refused ones included (a service down refuses them at once)."""


@dataclass
class Measured:
    """What one fault test injected and measured."""

    name: str
    injected: str = ""
    healed: str = ""
    sent: int = 0
    accepted: list[Accepted] = field(default_factory=list)
    answers: dict[str, int] = field(default_factory=dict)
    accepted_after_heal: int = 0
    in_flight_final_s: float = 0.0
    """From the fault's injection until every transfer accepted before it was final."""
    longest_stall_s: float = 0.0
    """The longest time no accepted transfer became final, from the fault to the last one."""
    quiescent_s: float = 0.0
    """From the end of the load until no saga ran."""
    findings: Findings = field(default_factory=Findings)

    def lines(self) -> list[str]:
        """The report printed for the test."""
        outcomes = ", ".join(f"{name} {count}" for name, count in
                             sorted(self.findings.outcomes.items()))  # fmt: skip
        answers = ", ".join(f"{name}: {count}" for name, count in sorted(self.answers.items()))
        assets = ", ".join(f"{currency} {total:f}" for currency, total in
                           sorted(self.findings.assets.items()))  # fmt: skip
        return [
            f"[faults] {self.name}",
            f"  injected: {self.injected}; healed: {self.healed}",
            f"  transfers sent {self.sent}, accepted (202) {len(self.accepted)}"
            f" ({self.accepted_after_heal} after the heal); answers {answers}",
            f"  outcomes of the accepted: {outcomes}",
            f"  recovery: in-flight transfers all final {self.in_flight_final_s:.1f} s after the"
            f" fault; longest stall of outcomes {self.longest_stall_s:.1f} s; quiescent"
            f" {self.quiescent_s:.1f} s after the load",
            f"  invariants: {len(self.findings.violations)} violations;"
            f" {self.findings.events_verified} events' hash links verified; balances {assets}",
        ]


def seed() -> int:
    """The seed of a test's random choices (the fault's moment, the transfers): FAULTS_SEED
    when set, to replay a printed run's choices (not its timing), else a fresh one."""
    given = os.environ.get("FAULTS_SEED")
    return int(given) if given else random.SystemRandom().randrange(1_000_000)


async def under_load(
    ledger: LedgerProcesses, accounts: dict[str, list[str]], name: str, inject: Step,
    heal: Step, *, seed: int,
) -> Measured:
    """Send transfers at RATE_PER_S; inject the fault at a random moment of WARM_UP_S, heal
    it, go on for AFTER_HEAL_S, then wait for quiescence and check everything.

    The load after the heal is a load of its own, so that however long the heal took (and
    however much of the first load's bound it used), the system is shown to take new work.
    """
    rng = random.Random(seed)
    measured = Measured(f"{name} (seed {seed})")
    during = TransferLoad(ledger.api, accounts, rng, RATE_PER_S, MAX_ACCEPTED, MAX_REQUESTS)
    after = TransferLoad(ledger.api, accounts, rng, RATE_PER_S, MAX_ACCEPTED, MAX_REQUESTS)
    async with during.running():
        await asyncio.sleep(rng.uniform(*WARM_UP_S))
        injected_at = datetime.now(UTC)
        injected_s = time.monotonic()
        measured.injected = await inject()
        measured.healed = await heal()
    async with after.running():
        await asyncio.sleep(AFTER_HEAL_S)
    measured.quiescent_s = await wait_quiescent(ledger)
    accepted = [*during.accepted, *after.accepted]
    measured.sent, measured.accepted = during.sent + after.sent, accepted
    measured.answers = dict(during.answers + after.answers)
    measured.accepted_after_heal = len(after.accepted)
    before = {a.transfer_id for a in accepted if a.accepted_at_s < injected_s}
    finals = await _final_times(ledger, [a.transfer_id for a in accepted])
    measured.in_flight_final_s = max(
        [(at - injected_at).total_seconds() for tid, at in finals.items() if tid in before],
        default=0.0,
    )
    measured.longest_stall_s = _longest_gap([injected_at, *sorted(
        at for at in finals.values() if at > injected_at)])  # fmt: skip
    measured.findings = await check_invariants(ledger, accepted)
    return measured


async def _final_times(ledger: LedgerProcesses, transfer_ids: list[str]) -> dict[str, datetime]:
    """When each of the transfers last changed (became final, once quiescent)."""
    connection = await asyncpg.connect(ledger.servers.database_url)
    try:
        rows = await connection.fetch(
            f"select transfer_id, updated_at from {ledger.schema('trade')}.settlements"
            " where transfer_id = any($1::text[])", transfer_ids,
        )  # fmt: skip
    finally:
        await connection.close()
    return {row["transfer_id"]: row["updated_at"] for row in rows}


def _longest_gap(instants: list[datetime]) -> float:
    gaps = [(later - earlier).total_seconds() for earlier, later in pairwise(instants)]
    return max(gaps, default=0.0)
