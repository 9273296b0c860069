"""Faults of the services' processes and of the servers under them, each under a load of
transfers: after the fault heals every saga finishes, every invariant holds, and every
transfer the API accepted (202) is found and final.

- SIGKILL of the saga orchestrator, of the account, risk and trade services, restarted;
- a participant (account, risk) paused with SIGSTOP past the step and command timeouts;
- nats-server stopped and started again on the same port and data;
- PostgreSQL stopped (`pg_ctl stop -m fast`) and started again on the same data.

One set of processes serves the whole module; each test heals what it broke, and the
invariants are checked over everything the ledger ever did, not only the test's own load.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tests.faults.conftest import Bench
from tests.faults.scenario import Measured, seed, under_load

pytestmark = pytest.mark.faults

KILL_DOWNTIME_S = 0.5
"""How long a killed service stays dead before it is started again."""
SERVER_DOWNTIME_S = 2.0
"""How long a stopped server stays down: twice the step timeout, so steps go unanswered."""
PAUSE_S = 3.0
"""A paused participant stays stopped this long: three times the step and command timeout."""


def _assert_survived(measured: Measured) -> None:
    assert not measured.findings.violations, "\n".join(measured.findings.violations)
    assert measured.accepted_after_heal, "no transfer was accepted after the fault healed"
    assert "500" not in measured.answers, f"internal errors answered: {measured.answers}"


@pytest.mark.parametrize("service", ["saga", "account", "risk", "trade"])
async def test_a_service_killed_under_load_loses_nothing(
    healthy: Bench, report: Callable[[Measured], None], service: str
) -> None:
    ledger = healthy.ledger
    process = ledger[service]
    restarted_s: list[float] = []

    async def kill() -> str:
        pid = process.pid
        process.kill()
        return f"SIGKILL {service} (pid {pid})"

    async def restart() -> str:
        await asyncio.sleep(KILL_DOWNTIME_S)
        restarted_s.append(await ledger.restart(service))
        return f"restarted after {KILL_DOWNTIME_S} s, ready in {restarted_s[0]:.1f} s"

    measured = await under_load(ledger, healthy.accounts, f"SIGKILL {service} under load",
                                kill, restart, seed=seed())  # fmt: skip
    report(measured)
    _assert_survived(measured)


@pytest.mark.parametrize("service", ["account", "risk"])
async def test_a_participant_paused_past_the_command_timeout_loses_nothing(
    healthy: Bench, report: Callable[[Measured], None], service: str
) -> None:
    process = healthy.ledger[service]

    async def pause() -> str:
        process.pause()
        return f"SIGSTOP {service} (pid {process.pid}) for {PAUSE_S} s"

    async def resume() -> str:
        await asyncio.sleep(PAUSE_S)
        process.resume()
        return "SIGCONT"

    measured = await under_load(healthy.ledger, healthy.accounts,
                                f"{service} paused past the command timeout", pause, resume,
                                seed=seed())  # fmt: skip
    report(measured)
    _assert_survived(measured)


async def test_a_nats_server_restart_under_load_loses_nothing(
    healthy: Bench, report: Callable[[Measured], None]
) -> None:
    nats = healthy.private.nats

    async def stop() -> str:
        nats.stop()
        return f"nats-server stopped (SIGTERM), {SERVER_DOWNTIME_S} s down"

    async def start() -> str:
        await asyncio.sleep(SERVER_DOWNTIME_S)
        await asyncio.to_thread(nats.start)
        ready_s = await healthy.ledger.wait_all_ready()
        return f"started on the same port and data; every service ready {ready_s:.1f} s later"

    measured = await under_load(healthy.ledger, healthy.accounts, "nats-server restart",
                                stop, start, seed=seed())  # fmt: skip
    report(measured)
    _assert_survived(measured)


async def test_a_postgres_restart_under_load_loses_nothing(
    healthy: Bench, report: Callable[[Measured], None]
) -> None:
    postgres = healthy.private.postgres

    async def stop() -> str:
        await asyncio.to_thread(postgres.stop)
        return f"PostgreSQL stopped (pg_ctl stop -m fast), {SERVER_DOWNTIME_S} s down"

    async def start() -> str:
        await asyncio.sleep(SERVER_DOWNTIME_S)
        await asyncio.to_thread(postgres.start)
        ready_s = await healthy.ledger.wait_all_ready()
        return f"started on the same port and data; every service ready {ready_s:.1f} s later"

    measured = await under_load(healthy.ledger, healthy.accounts, "PostgreSQL restart",
                                stop, start, seed=seed())  # fmt: skip
    report(measured)
    _assert_survived(measured)
