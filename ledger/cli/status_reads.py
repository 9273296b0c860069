"""What `ledger status` gathers: per service its migrations and relay lag, the durable
consumers of the events stream, the sagas by status, and the command service instances that
answer the NATS micro discovery ping (`$SRV.PING`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError
from nats.micro.service import ServicePing

from eventstore import EventStore
from ledger.cli.connections import ServiceDatabase, latest_migration, where
from ledger.relay import relay_lag_events
from ledger.settings import Settings
from saga.runs import RUNS_TABLE

DISCOVERY_WINDOW_S: Final = 1.0
"""How long `$SRV.PING` answers are collected: every instance answers within it or is late."""
MAX_INSTANCES: Final = 1_000
"""The most instance answers one ping collects."""
_CONSUMER_PAGE: Final = 256
"""JetStream lists consumers 256 at a time."""
_MAX_CONSUMER_PAGES: Final = 40


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    """One service's store: where it is, how migrated, how far its relay lags."""

    service: str
    schema: str
    database: str
    migrations_applied: int
    migrations_latest: int
    relay_lag_events: int | None
    """None when the schema was never migrated."""


@dataclass(frozen=True, slots=True)
class ConsumerStatus:
    """A durable consumer of the events stream: what waits for it, what it holds unacked."""

    name: str
    service: str
    pending: int
    ack_pending: int
    redelivered: int


@dataclass(frozen=True, slots=True)
class Instance:
    """A command service instance that answered the discovery ping."""

    name: str
    id: str
    version: str


@dataclass(frozen=True, slots=True)
class Status:
    """Everything `ledger status` shows."""

    services: list[ServiceStatus]
    events_stream: str
    is_events_stream_found: bool
    consumers: list[ConsumerStatus]
    sagas: dict[str, int] | None
    """Sagas by status; None when the saga schema has no saga_runs table yet."""
    instances: list[Instance]

    def as_document(self) -> dict[str, Any]:
        """The status as plain JSON values, for `--json`."""
        return asdict(self)


async def service_status(database: ServiceDatabase) -> ServiceStatus:
    """Migrations applied to the service's schema and its relay's lag."""
    applied = await database.applied_migrations()
    lag = await relay_lag_events(EventStore(database.pool, database.schema)) if applied else None
    return ServiceStatus(database.name, database.schema, where(database.url), len(applied),
                         latest_migration(), lag)  # fmt: skip


async def saga_counts(database: ServiceDatabase) -> dict[str, int] | None:
    """Sagas by status from `saga_runs` (None when the table does not exist)."""
    table = f"{database.schema}.{RUNS_TABLE}"
    if await database.pool.fetchval("select to_regclass($1)", table) is None:
        return None
    rows = await database.pool.fetch(
        f"select status, count(*) as n from {table} group by status order by status"
    )
    return {row["status"]: int(row["n"]) for row in rows}


async def consumer_statuses(
    nc: Client, settings: Settings, services: Sequence[str]
) -> tuple[bool, list[ConsumerStatus]]:
    """The durable consumers of this ledger on the events stream (whether the stream exists).

    A service's durables are named `<its schema>-<purpose>`, so the schema prefix tells this
    ledger's consumers from those of other ledgers sharing the NATS server."""
    js = nc.jetstream()
    owners = {f"{settings.schema_for(service)}-": service for service in services}
    found: list[ConsumerStatus] = []
    try:
        for page in range(_MAX_CONSUMER_PAGES):
            infos = await js.consumers_info(settings.events_stream, offset=len(found) or None)
            for info in infos:
                name = info.name or ""
                owner = next((s for prefix, s in owners.items() if name.startswith(prefix)), None)
                if owner is not None:
                    found.append(ConsumerStatus(name, owner, info.num_pending or 0,
                                                info.num_ack_pending or 0,
                                                info.num_redelivered or 0))  # fmt: skip
            if len(infos) < _CONSUMER_PAGE:
                break
            assert page < _MAX_CONSUMER_PAGES - 1, "more consumers than status lists"
    except NotFoundError:
        return False, []
    return True, sorted(found, key=lambda consumer: consumer.name)


async def discovered_instances(nc: Client, window_s: float = DISCOVERY_WINDOW_S) -> list[Instance]:
    """Every micro service instance that answers `$SRV.PING` within `window_s`."""
    answers: list[Msg] = []
    is_full = asyncio.Event()
    inbox = nc.new_inbox()

    async def collect(message: Msg) -> None:
        answers.append(message)
        if len(answers) >= MAX_INSTANCES:
            is_full.set()

    subscription = await nc.subscribe(inbox, cb=collect, max_msgs=MAX_INSTANCES)
    try:
        await nc.publish("$SRV.PING", b"", reply=inbox)
        await nc.flush()
        # Instances do not say how many they are: collect for the window, or until full.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(window_s):
                await is_full.wait()
    finally:
        await subscription.unsubscribe()
    instances = []
    for message in answers:
        try:
            ping = ServicePing.from_dict(orjson.loads(message.data))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue  # not a micro service's answer: not an instance to list
        instances.append(Instance(ping.name, ping.id, ping.version))
    return sorted(instances, key=lambda instance: (instance.name, instance.id))
