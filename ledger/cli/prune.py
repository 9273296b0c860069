"""`ledger prune`: delete the tracking rows that nothing can ask for again
(docs/retention.md).

- Inbox rows older than the events stream keeps a message (its `max_age`, asked of NATS),
  plus a day: no such message can be delivered again. A stream that keeps messages for ever,
  or none to ask, keeps the inbox whole.
- Command replies older than `--command-replies-days`, but for those of the commands that
  sagas not yet final have sent: only the orchestrator sends commands, and only for a saga
  that is not final (running, compensating, or parked for an operator's retry).
- Idempotency keys older than `--idempotency-keys-days`: a client that retries later than
  that makes a new request.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Final

import orjson
import typer
from nats.js.errors import NotFoundError
from rich.console import Console
from rich.table import Table

from eventstore.retention import TrackingTable
from eventstore.retention import prune as prune_rows
from ledger.cli.connections import ServiceDatabase, nats_client, service_databases
from ledger.cli.failures import err, reported_failures, settings_or_exit
from ledger.cli.operations import JsonOption
from ledger.cli.run import DataDirOption
from ledger.cli.target import operator_settings
from ledger.services import available_services
from ledger.settings import Settings
from saga.retention import unfinished_command_ids

out = Console()

MARGIN: Final = timedelta(days=1)
"""Kept beyond the inbox's bound: clocks of different servers, a message in flight."""

KeysDays = Annotated[float, typer.Option(
    min=1.0, max=36_500.0, help="Keep idempotency keys this many days.")]
RepliesDays = Annotated[float, typer.Option(
    min=1.0, max=36_500.0, help="Keep command replies this many days at least.")]


@dataclass(frozen=True, slots=True)
class Pruned:
    """What one table of one service lost (or would lose, in a dry run)."""

    service: str
    tracking: TrackingTable
    before: datetime | None
    """None: nothing of this table can go (the stream keeps its messages for ever)."""
    rows: int


def prune(
    idempotency_keys_days: KeysDays = 30.0,
    command_replies_days: RepliesDays = 30.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count; delete nothing.")] = False,
    as_json: JsonOption = False,
    data_dir: DataDirOption = None,
) -> None:
    """Delete inbox rows, command replies and idempotency keys that nothing can ask for
    again. Safe while the services run; each batch is its own transaction."""
    settings = settings_or_exit()
    with reported_failures(), operator_settings(settings, data_dir, err,
                                                need_nats=True) as resolved:  # fmt: skip
        pruned = asyncio.run(_prune(
            resolved, timedelta(days=idempotency_keys_days),
            timedelta(days=command_replies_days), dry_run,
        ))  # fmt: skip
    if as_json:
        document = [{"service": each.service, "table": each.tracking.table,
                     "before": each.before.isoformat() if each.before else None,
                     "rows": each.rows, "dry_run": dry_run} for each in pruned]  # fmt: skip
        typer.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
        return
    title = "would prune (dry run)" if dry_run else "pruned"
    table = Table("service", "table", "rows dated before", "rows", title=title)
    for each in pruned:
        before = each.before.isoformat(timespec="seconds") if each.before else "kept: for ever"
        table.add_row(each.service, each.tracking.table, before, str(each.rows))
    out.print(table)


async def _prune(
    settings: Settings, keys_age: timedelta, replies_age: timedelta, dry_run: bool
) -> list[Pruned]:
    services = list(available_services().values())
    pruned: list[Pruned] = []
    stream_max_age = await _stream_max_age(settings)
    async with service_databases(settings, services) as databases:
        kept_replies = await _unfinished_command_ids(databases)
        for database in databases:
            if not await database.applied_migrations():
                continue  # never migrated: nothing to prune
            now: datetime = await database.pool.fetchval("select now()")
            cutoffs = {
                TrackingTable.INBOX:
                    None if stream_max_age is None else now - stream_max_age - MARGIN,
                TrackingTable.COMMAND_REPLIES: now - replies_age,
                TrackingTable.IDEMPOTENCY_KEYS: now - keys_age,
            }  # fmt: skip
            for tracking, before in cutoffs.items():
                keep = kept_replies if tracking is TrackingTable.COMMAND_REPLIES else set()
                rows = 0 if before is None else await prune_rows(
                    database.pool, database.schema, tracking, before, keep=keep,
                    dry_run=dry_run)  # fmt: skip
                pruned.append(Pruned(database.name, tracking, before, rows))
    return pruned


async def _stream_max_age(settings: Settings) -> timedelta | None:
    """How long the events stream keeps a message, as NATS has it (not as this command's
    settings say: a cron job's environment may lack the services' value); None for ever, or
    when there is no stream to ask."""
    async with nats_client(settings) as nc:
        try:
            info = await nc.jetstream().stream_info(settings.events_stream)
        except NotFoundError:
            return None
    max_age_s = info.config.max_age
    return timedelta(seconds=max_age_s) if max_age_s else None


async def _unfinished_command_ids(databases: list[ServiceDatabase]) -> set[uuid.UUID]:
    """The commands whose replies every service keeps: those sent by sagas not yet final.
    Read before any reply is deleted (see `unfinished_command_ids`)."""
    saga = next(database for database in databases if database.name == "saga")
    return await unfinished_command_ids(saga.pool, saga.schema)
