"""The ledger on a three-node NATS JetStream cluster (events stream with three replicas): the
node that leads the events stream is SIGKILLed under load and stays down; the system goes on
with the other two and loses nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from tests.faults.cluster import NatsCluster
from tests.faults.conftest import ACCOUNTS_PER_CURRENCY
from tests.faults.harness import SERVICES, LedgerProcesses, Servers
from tests.faults.load import open_funded_accounts
from tests.faults.scenario import Measured, seed, under_load

pytestmark = pytest.mark.faults

EVENTS_STREAM = "LEDGER_EVENTS"


@pytest.fixture
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[NatsCluster]:
    """Three routed nats-servers, ready."""
    with NatsCluster(tmp_path_factory.mktemp("nats-cluster")) as started:
        await started.wait_ready()
        yield started


@pytest.fixture
async def ledger_on_cluster(
    cluster: NatsCluster, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LedgerProcesses]:
    """The four services, each connected to all three seeds, the events stream in three
    replicas; on the session's PostgreSQL (nothing restarts it) under a prefix of its own."""
    ledger = LedgerProcesses(
        Servers(database_url, cluster.seed_urls), tmp_path_factory.mktemp("cluster-ledger"),
        extra_env={"LEDGER_EVENTS_STREAM": EVENTS_STREAM, "LEDGER_EVENTS_STREAM_REPLICAS": "3"},
    )  # fmt: skip
    try:
        await ledger.start()
        yield ledger
    finally:
        try:
            ledger.stop()
            await ledger.api.aclose()
        finally:
            await _drop_schemas(database_url, ledger)


async def _drop_schemas(database_url: str, ledger: LedgerProcesses) -> None:
    """The session's PostgreSQL outlives the test (it may be the machine's): leave nothing."""
    connection = await asyncpg.connect(database_url)
    try:
        for service in SERVICES:
            await connection.execute(f"drop schema if exists {ledger.schema(service)} cascade")
    finally:
        await connection.close()


async def test_losing_the_events_stream_leader_loses_nothing(
    cluster: NatsCluster, ledger_on_cluster: LedgerProcesses,
    report: Callable[[Measured], None],
) -> None:
    ledger = ledger_on_cluster
    accounts = await open_funded_accounts(ledger.api, ACCOUNTS_PER_CURRENCY)

    async def kill_leader() -> str:
        leader = await cluster.stream_leader(EVENTS_STREAM)
        cluster.kill(leader)
        return f"SIGKILL nats-server {leader.name}, leader of {EVENTS_STREAM} (R3)"

    async def stay_down() -> str:
        return "none: the node stays down, two of three serve"

    measured = await under_load(ledger, accounts, "NATS cluster node killed", kill_leader,
                                stay_down, seed=seed())  # fmt: skip
    report(measured)
    assert not measured.findings.violations, "\n".join(measured.findings.violations)
    assert measured.accepted_after_heal, "no transfer was accepted after the node died"
    assert "500" not in measured.answers, f"internal errors answered: {measured.answers}"
