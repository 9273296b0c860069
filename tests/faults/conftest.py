"""Fixtures of the fault tests: private servers, the ledger as processes, and the report.

Every fault test runs against servers of its module's own (an embedded PostgreSQL and
nats-server under the test's temporary directory, never the machine's 5432/4222 nor the
session's shared ones), because it restarts them, and because another ledger's services on
the same NATS would answer this one's commands.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ledger.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from tests.faults.harness import LedgerProcesses, Servers
from tests.faults.load import open_funded_accounts
from tests.faults.scenario import Measured

ACCOUNTS_PER_CURRENCY = 4
_REPORT_LINES = pytest.StashKey[list[str]]()


@dataclass
class PrivateServers:
    """A PostgreSQL and a nats-server this module alone uses, restartable in place."""

    postgres: EmbeddedPostgres
    nats: EmbeddedNats

    @property
    def servers(self) -> Servers:
        """Their URLs, as the processes are given them."""
        return Servers(self.postgres.dsn, self.nats.url)


@dataclass
class Bench:
    """The ledger's processes, their funded accounts, and the servers under them."""

    ledger: LedgerProcesses
    accounts: dict[str, list[str]]
    private: PrivateServers
    started_s: float


@pytest.fixture(scope="module")
def private_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateServers]:
    """Embedded PostgreSQL and NATS on fixed free ports (a restart keeps the port)."""
    root = tmp_path_factory.mktemp("fault-servers")
    postgres = EmbeddedPostgres(root / "postgres", port=free_port())
    nats = EmbeddedNats(root / "nats", port=free_port())
    with postgres, nats:
        yield PrivateServers(postgres, nats)


@pytest.fixture(scope="module")
async def bench(
    private_servers: PrivateServers, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Bench]:
    """The four services as processes on the private servers, with funded accounts."""
    work_dir: Path = tmp_path_factory.mktemp("fault-ledger")
    ledger = LedgerProcesses(private_servers.servers, work_dir)
    try:
        started_s = await ledger.start()
        accounts = await open_funded_accounts(ledger.api, ACCOUNTS_PER_CURRENCY)
        yield Bench(ledger, accounts, private_servers, started_s)
    finally:
        ledger.stop()
        await ledger.api.aclose()


@pytest.fixture
async def healthy(bench: Bench) -> Bench:
    """The bench with every process running and ready (a failed test may have left one
    down) and both servers up."""
    bench.private.postgres.start()
    bench.private.nats.start()
    await bench.ledger.ensure_running()
    return bench


@pytest.fixture
def report(request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
           ) -> Callable[[Measured], None]:
    """Print a fault test's measurement now and again in the session's summary."""

    def print_measured(measured: Measured) -> None:
        lines = measured.lines()
        with capsys.disabled():
            print("\n" + "\n".join(lines))
        request.config.stash.setdefault(_REPORT_LINES, []).extend(lines)

    return print_measured


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Repeat every fault test's measurement at the end of the run."""
    lines = terminalreporter.config.stash.get(_REPORT_LINES, [])
    if lines:
        terminalreporter.section("fault injection")
        for line in lines:
            terminalreporter.write_line(line)
