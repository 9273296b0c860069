"""The system under test, shared by every test of this package, and the hypothesis profiles.

One host with all four services serves the whole package (starting one costs seconds);
each hypothesis example and each test works with accounts of an owner of its own, so they
never see each other's money. PostgreSQL is the session's (the services get schemas with
a prefix of their own, dropped at the end); NATS is a server of this package's own, started
under its temporary directory unless `LEDGER_TEST_NATS_URL` names one: the full ledger
serves the saga's commands under their real names and starts sagas from every
`ledger.trade.>` event on the server, so it must not share a NATS server with the other
tests' services (their events stay in the stream for the session).

Profiles (`--hypothesis-profile=NAME`, applied to this package's state machine only):
`ci` (the default here: a handful of short runs, about a minute for the whole package on
two cores) and `long` (200 runs of up to 50 steps, shrinking on; about 25 minutes here, so
raise the watchdog's `LEDGER_TEST_STUCK_S` above it, or the run is ended at 600 s).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
from hypothesis import HealthCheck, Phase, settings

from ledger.embedded import EmbeddedNats
from ledger.services import available_services
from tests.system.harness import SystemUnderTest, system_settings

_SLOW_IS_EXPECTED = [HealthCheck.too_slow, HealthCheck.data_too_large,
                     HealthCheck.filter_too_much]  # fmt: skip

settings.register_profile(
    "ci", max_examples=5, stateful_step_count=15, deadline=None, database=None,
    suppress_health_check=_SLOW_IS_EXPECTED, print_blob=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)  # fmt: skip
settings.register_profile(
    "long", max_examples=200, stateful_step_count=50, deadline=None, database=None,
    suppress_health_check=_SLOW_IS_EXPECTED, print_blob=True,
)  # fmt: skip


def system_profile() -> settings:
    """The profile the state machine runs with: `long` when asked for (also with
    `--hypothesis-verbosity`, whose plugin names it `long-with-<level>-verbosity`), else `ci`."""
    name = settings.get_current_profile_name()
    return settings.get_profile(name if name.startswith("long") else "ci")


@pytest.fixture(scope="package")
def system_nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A NATS server for this package alone (see the module's docstring)."""
    given_url = os.environ.get("LEDGER_TEST_NATS_URL")
    if given_url:
        yield given_url
        return
    with EmbeddedNats(tmp_path_factory.mktemp("system-nats")) as server:
        yield server.url


@pytest.fixture(scope="package")
async def system(database_url: str, system_nats_url: str) -> AsyncIterator[SystemUnderTest]:
    """The whole ledger, serving HTTP on a loopback port, for the package."""
    under_test = SystemUnderTest(system_settings(database_url, system_nats_url))
    try:
        async with under_test.serving():
            yield under_test
    finally:
        connection = await asyncpg.connect(database_url)
        try:
            for service in available_services():
                schema = under_test.settings.schema_for(service)
                await connection.execute(f"drop schema if exists {schema} cascade")
        finally:
            await connection.close()
