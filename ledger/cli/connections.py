"""Connections of the operator commands: each service's database, and NATS, with a bound on
how long a server that does not answer is waited for, and a message that names it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import asyncpg
import nats
import nats.errors
from nats.aio.client import Client

from eventstore.migrations import applied_migrations, load_migrations
from ledger.bus import NatsSecurity
from ledger.cli.failures import OperatorError, first_line
from ledger.host import Service
from ledger.settings import Settings

CONNECT_TIMEOUT_S: Final = 5.0
"""How long a server that does not answer is waited for before the command gives up."""
POOL_SIZE: Final = 3
"""Connections per database: a rebuild folds on one while it reads ahead on another."""


def where(url: str) -> str:
    """`host:port` of a server URL, for messages (never its user or password)."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if host is None:
        return "the configured server"
    return f"{host}:{port}" if port else host


@dataclass(frozen=True, slots=True)
class ServiceDatabase:
    """One service's schema on its database, as an operator command sees it."""

    service: Service
    schema: str
    pool: asyncpg.Pool
    url: str

    @property
    def name(self) -> str:
        """The service's name (`account`, ...)."""
        return self.service.name

    async def applied_migrations(self) -> list[int]:
        """The migration versions applied to the schema (empty: never migrated)."""
        async with self.pool.acquire() as connection:
            return await applied_migrations(connection, self.schema)


def latest_migration() -> int:
    """The newest migration version the event store ships."""
    return max(migration.version for migration in load_migrations())


@asynccontextmanager
async def service_databases(
    settings: Settings, services: Sequence[Service]
) -> AsyncIterator[list[ServiceDatabase]]:
    """A pool per distinct database URL, and each service's schema on it.

    Raises OperatorError naming the server when one does not answer."""
    async with AsyncExitStack() as stack:
        pools: dict[str, asyncpg.Pool] = {}
        found = []
        for service in services:
            url = settings.database_url_for(service.name)
            assert url is not None, "operator_settings fills the database URL in"
            if url not in pools:
                pools[url] = await _open_pool(url)
                stack.push_async_callback(pools[url].close)
            found.append(ServiceDatabase(service, settings.schema_for(service.name),
                                         pools[url], url))  # fmt: skip
        yield found


async def _open_pool(url: str) -> asyncpg.Pool:
    try:
        return await asyncpg.create_pool(
            url, min_size=1, max_size=POOL_SIZE, timeout=CONNECT_TIMEOUT_S
        )
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as error:
        # TimeoutError is an OSError; a malformed URL is a ValueError or a config error.
        reason = first_line(error) if str(error) else "no answer"
        raise OperatorError(f"PostgreSQL at {where(url)} does not answer: {reason}") from None


@asynccontextmanager
async def nats_client(settings: Settings) -> AsyncIterator[Client]:
    """A NATS connection, with the configured credentials and TLS, that does not reconnect:
    a command wants an answer, not a wait.

    Raises OperatorError naming the servers when none answers."""

    async def quiet(error: Exception) -> None:
        """nats-py would log each failed attempt; the command reports the outcome once."""

    servers = settings.nats_servers
    try:
        # nats-py tries each seed until one answers, up to max_reconnect_attempts more
        # times each (0 would mean for ever); the outer timeout bounds it all.
        async with asyncio.timeout(CONNECT_TIMEOUT_S * 2):
            client = await nats.connect(
                servers=servers, name="ledger-cli", connect_timeout=CONNECT_TIMEOUT_S,
                allow_reconnect=False, max_reconnect_attempts=1, reconnect_time_wait=0.1,
                error_cb=quiet, **NatsSecurity.from_settings(settings).connect_options(),
            )  # fmt: skip
    except (OSError, nats.errors.Error) as error:
        shown = ", ".join(where(server) for server in servers)
        reason = first_line(error) if str(error) else "no answer"
        raise OperatorError(f"NATS at {shown} does not answer: {reason}") from None
    try:
        yield client
    finally:
        await client.close()
