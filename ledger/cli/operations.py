"""`ledger migrate` and `ledger status`: bring the services' schemas up to date, and see how
the running system stands (migrations, relay and consumer lag, sagas, instances).

Both work on the servers `operator_settings` finds: the configured ones, else the embedded
ones `ledger up` runs under the data directory, else embedded ones started for the command.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.table import Table

from eventstore import EventStore
from eventstore.migrations import migrate as migrate_schema
from ledger.cli import status_reads
from ledger.cli.connections import ServiceDatabase, nats_client, service_databases
from ledger.cli.failures import BAD_ARGUMENTS, err, fail, reported_failures, settings_or_exit
from ledger.cli.run import DataDirOption
from ledger.cli.target import operator_settings
from ledger.host import Service
from ledger.services import available_services
from ledger.settings import Settings

out = Console()

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def migrate(
    service: Annotated[
        str | None,
        typer.Option("--service", help="Only this service (account, risk, trade, saga)."),
    ] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Bring each service's schema up to the newest event store migration and create its
    read-model tables. Safe to run again, and while the services run."""
    services = _chosen_services(service)
    settings = settings_or_exit()
    with reported_failures(), operator_settings(settings, data_dir, err) as resolved:
        applied = asyncio.run(_migrate(resolved, services))
    table = Table("service", "schema", "applied now", "version", title="migrations")
    for database, ran, version in applied:
        shown = ", ".join(f"{number:04d}" for number in ran) if ran else "[dim]none[/]"
        table.add_row(database.name, database.schema, shown, f"{version:04d}")
    out.print(table)


async def _migrate(
    settings: Settings, services: Sequence[Service]
) -> list[tuple[ServiceDatabase, list[int], int]]:
    applied = []
    async with service_databases(settings, services) as databases:
        for database in databases:
            async with database.pool.acquire() as connection:
                ran = await migrate_schema(connection, database.schema)
            store = EventStore(database.pool, database.schema,
                               inline_projections=database.service.inline_projections())
            for projection in store.inline_projections:  # a rebuild must know them inline
                await projection.ensure_table(store)
            versions = await database.applied_migrations()
            applied.append((database, [m.version for m in ran], max(versions)))
    return applied


def status(as_json: JsonOption = False, data_dir: DataDirOption = None) -> None:
    """Show migrations and relay lag per service, the durable consumers' lag, sagas by
    status, and the command service instances that answer `$SRV.PING`."""
    settings = settings_or_exit()
    with reported_failures(), operator_settings(settings, data_dir, err, need_nats=True) as ready:
        gathered = asyncio.run(_status(ready))
    if as_json:
        typer.echo(orjson.dumps(gathered.as_document(), option=orjson.OPT_INDENT_2).decode())
    else:
        _print_status(gathered)


async def _status(settings: Settings) -> status_reads.Status:
    services = list(available_services().values())
    async with service_databases(settings, services) as databases:
        service_statuses = [await status_reads.service_status(db) for db in databases]
        saga_db = next((db for db in databases if db.name == "saga"), None)
        is_saga_migrated = saga_db is not None and await saga_db.applied_migrations()
        sagas = await status_reads.saga_counts(saga_db) if saga_db and is_saga_migrated else None
    async with nats_client(settings) as nc:
        is_found, consumers = await status_reads.consumer_statuses(
            nc, settings, [service.name for service in services]
        )
        instances = await status_reads.discovered_instances(nc)
    return status_reads.Status(service_statuses, settings.events_stream, is_found, consumers,
                               sagas, instances)  # fmt: skip


def _print_status(gathered: status_reads.Status) -> None:
    services = Table("service", "schema", "database", "migrations", "relay lag (events)",
                     title="services")  # fmt: skip
    for row in gathered.services:
        is_current = row.migrations_applied == row.migrations_latest
        migrations = f"{row.migrations_applied}/{row.migrations_latest}"
        services.add_row(
            row.service, row.schema, row.database,
            migrations if is_current else f"[yellow]{migrations} (run ledger migrate)[/]",
            "[dim]-[/]" if row.relay_lag_events is None else _lag(row.relay_lag_events),
        )  # fmt: skip
    out.print(services)
    consumers = Table("consumer", "service", "pending", "ack pending", "redelivered",
                      title=f"durable consumers of {gathered.events_stream}")  # fmt: skip
    for consumer in gathered.consumers:
        consumers.add_row(consumer.name, consumer.service, _lag(consumer.pending),
                          _lag(consumer.ack_pending), str(consumer.redelivered))  # fmt: skip
    if not gathered.is_events_stream_found:
        out.print(f"[yellow]no stream {gathered.events_stream} yet (no service has started)[/]")
    elif gathered.consumers:
        out.print(consumers)
    else:
        out.print("[dim]no durable consumers yet[/]")
    if gathered.sagas is None:
        out.print("[dim]no saga log yet[/]")
    else:
        sagas = Table("status", "sagas", title="sagas")
        for name, count in gathered.sagas.items():
            sagas.add_row(name, str(count))
        out.print(sagas if gathered.sagas else "[dim]no sagas yet[/]")
    instances = Table("service", "instance", "version", title="instances ($SRV.PING)")
    for instance in gathered.instances:
        instances.add_row(instance.name, instance.id, instance.version)
    out.print(instances if gathered.instances else "[dim]no service instance answered[/]")


def _lag(count: int) -> str:
    return f"{count:,}" if count == 0 else f"[yellow]{count:,}[/]"


def _chosen_services(name: str | None) -> list[Service]:
    """Every service, or the one named; an unknown name is a bad argument."""
    services = available_services()
    if name is None:
        return list(services.values())
    if name not in services:
        fail(f"unknown service {name!r} (known: {', '.join(services)})", BAD_ARGUMENTS)
    return [services[name]]
