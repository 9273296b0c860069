"""`ledger audit`: verify the hash chains and invariants, replay an account or a transfer,
export a period for an external auditor, and check such an export offline.

Thin: arguments, servers and rendering. The work is in `ledger.auditing`; the rendering in
`ledger.cli.audit_views`. A result with a break exits 1; bad arguments exit 2 with one line.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from account_service.errors import AccountNotFound
from ledger.auditing import (
    AuditStores,
    PeriodNotOver,
    UnreplayableStream,
    events_in_period,
    events_to_check,
    export_period,
    find_stores,
    parse_instant,
    replay_account,
    transfer_story,
    verify_export,
    verify_stores,
)
from ledger.cli import audit_views as views
from ledger.cli.connections import service_databases
from ledger.cli.failures import (
    BAD_ARGUMENTS,
    FAILED,
    OperatorError,
    fail,
    reported_failures,
    settings_or_exit,
)
from ledger.cli.target import operator_settings
from ledger.services import available_services
from ledger.settings import SERVICES, Settings

app = typer.Typer(help="Verify, replay and export the audit trail.", no_args_is_help=True)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
"""Progress bars and notes; errors go through `ledger.cli.failures.fail`."""
T = TypeVar("T")

ServiceOption = Annotated[
    str | None, typer.Option("--service", help="account, risk, trade or saga (default: all).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON on stdout, for scripts.")]
DataDirOption = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Where `ledger up` keeps embedded servers (default: .ledger)."),
]
TIME_HELP = "ISO 8601, e.g. 2024-05-01T12:00:00Z; without an offset, UTC."


@app.command()
def verify(
    service: ServiceOption = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", help="Check an export offline instead (no database needed)."),
    ] = None,
    json_output: JsonOption = False,
    data_dir: DataDirOption = None,
) -> None:
    """Recompute every hash chain and check the invariants; exit 1 on any break."""
    if file is not None:
        if service is not None:
            fail("--service does not apply to --file: an export is checked whole", BAD_ARGUMENTS)
        _verify_file(file, json_output)
        return
    services = _services(service)
    # The saga's log is read too: it tells which holds must have ended.
    opened = [*services, "saga"] if "account" in services else services

    async def work(stores: AuditStores) -> Any:
        _require_stores(stores, services)
        chain_events, account_events = await events_to_check(stores, services)
        with _progress([("hash chains", chain_events), ("account invariants", account_events)],
                       is_hidden=json_output) as (on_chains, on_accounts):  # fmt: skip
            return await verify_stores(stores, services, on_chains, on_accounts)

    report = _run(opened, work, data_dir)
    if json_output:
        _print_json(views.verify_json(report))
    else:
        for missing, schema in report.missing.items():
            err.print(f"[dim]no event store for {missing} (schema {schema}): not checked[/]")
        out.print(views.verify_summary(report) if report.is_clean
                  else views.verify_failure(report))  # fmt: skip
    if not report.is_clean:
        raise typer.Exit(1)


@app.command()
def replay(
    account: Annotated[str | None, typer.Option("--account", help="Replay this account.")] = None,
    transfer: Annotated[
        str | None, typer.Option("--transfer", help="Tell this transfer's (or trade's) story.")
    ] = None,
    as_of: Annotated[
        str | None, typer.Option("--as-of", help=f"The account at this instant; {TIME_HELP}")
    ] = None,
    json_output: JsonOption = False,
    data_dir: DataDirOption = None,
) -> None:
    """Replay an account's events (balance at an instant), or a transfer across services."""
    if (account is None) == (transfer is None):
        fail("give exactly one of --account and --transfer", BAD_ARGUMENTS)
    if transfer is not None and as_of is not None:
        fail("--as-of goes with --account", BAD_ARGUMENTS)
    instant = _instant("--as-of", as_of) if as_of is not None else None
    if account is not None:
        _replay_account(account, instant, json_output, data_dir)
    else:
        assert transfer is not None, "checked above"
        _replay_transfer(transfer, json_output, data_dir)


@app.command()
def export(
    since: Annotated[str | None, typer.Option("--since", help=f"Period start; {TIME_HELP}")] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="Period end (excluded); same format.")
    ] = None,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="The JSON-lines file to write (replaced whole).")
    ] = None,
    service: ServiceOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Write the events of a period with their hashes, one JSON object per line."""
    if since is None or until is None or out_file is None:
        fail("export needs --since, --until and --out", BAD_ARGUMENTS)
    start, end = _instant("--since", since), _instant("--until", until)
    if start >= end:
        fail("--since must be before --until", BAD_ARGUMENTS)
    if end > datetime.now(UTC):
        fail("--until is in the future: a period is exported once it is over", BAD_ARGUMENTS)
    if not out_file.parent.is_dir():
        fail(f"--out: the directory {out_file.parent} does not exist", BAD_ARGUMENTS)
    services = _services(service)

    async def work(stores: AuditStores) -> Any:
        _require_stores(stores, services)
        total = await events_in_period(stores, services, start, end)
        with _progress([("exporting", total)]) as (advance,):
            return await export_period(stores, services, start, end, out_file, advance)

    try:
        report = _run(services, work, data_dir)
    except PeriodNotOver as error:
        fail(str(error), FAILED)
    out.print(views.export_summary(report, start, end))


def _verify_file(file: Path, json_output: bool) -> None:
    try:
        report = verify_export(file)
    except OSError as error:
        fail(f"cannot read {file}: {error.strerror or error}", FAILED)
    if json_output:
        _print_json(views.file_json(report))
    else:
        out.print(views.file_summary(report) if report.is_intact else views.file_failure(report))
    if not report.is_intact:
        raise typer.Exit(1)


def _replay_account(account_id: str, as_of: datetime | None, json_output: bool,
                    data_dir: Path | None) -> None:  # fmt: skip
    async def work(stores: AuditStores) -> Any:
        _require_stores(stores, ["account"])
        store = stores.get("account")
        assert store is not None, "required above"
        return await replay_account(store, account_id, as_of)

    try:
        history = _run(["account"], work, data_dir)
    except AccountNotFound:
        fail(f"no account {account_id}", FAILED)
    except UnreplayableStream as error:
        fail(f"{error}; `ledger audit verify --service account` checks the whole store", FAILED)
    assets = settings_or_exit().assets()
    if json_output:
        if history.currency not in assets.scales:  # the JSON's amounts are decimal strings
            fail(f"the scale of {history.currency} is not in this shell's settings: set"
                 " LEDGER_INSTRUMENT_SCALES as the services have it", BAD_ARGUMENTS)  # fmt: skip
        _print_json(views.history_json(history, assets))
        return
    out.print(views.history_table(history, assets))
    out.print(views.balance_line(history, assets))


def _replay_transfer(transfer_id: str, json_output: bool, data_dir: Path | None) -> None:
    async def work(stores: AuditStores) -> Any:
        return await transfer_story(stores, transfer_id)

    story = _run(list(SERVICES), work, data_dir)
    if not story:
        fail(f"no transfer or trade {transfer_id} in any service", FAILED)
    if json_output:
        _print_json(views.story_json(transfer_id, story))
    else:
        out.print(views.story_table(transfer_id, story))


def _run(services: Sequence[str], work: Callable[[AuditStores], Awaitable[T]],
         data_dir: Path | None) -> T:  # fmt: skip
    """Run `work` on the services' stores, on the servers the operator's settings name;
    a server that fails is one line and exit 1 (the work's own errors pass through)."""
    settings = settings_or_exit()
    with reported_failures(), operator_settings(settings, data_dir, err) as resolved:
        return asyncio.run(_with_stores(resolved, services, work))


async def _with_stores(settings: Settings, services: Sequence[str],
                       work: Callable[[AuditStores], Awaitable[T]]) -> T:  # fmt: skip
    known = available_services()
    async with service_databases(settings, [known[name] for name in services]) as databases:
        stores = await find_stores((db.name, db.pool, db.schema) for db in databases)
        return await work(stores)


def _require_stores(stores: AuditStores, services: Sequence[str]) -> None:
    if not any(stores.get(service) for service in services):
        schemas = ", ".join(stores.missing[service] for service in services)
        raise OperatorError(f"no event store in schema {schemas}: has `ledger up` run here?")


def _services(service: str | None) -> list[str]:
    if service is None:
        return list(SERVICES)
    if service not in SERVICES:
        known = ", ".join(SERVICES)
        fail(f"--service: unknown service {service!r} (known: {known})", BAD_ARGUMENTS)
    return [service]


def _instant(option: str, text: str) -> datetime:
    try:
        return parse_instant(text)
    except ValueError as error:
        fail(f"{option}: {error}", BAD_ARGUMENTS)


@contextmanager
def _progress(
    tasks: Sequence[tuple[str, int]], *, is_hidden: bool = False
) -> Iterator[tuple[Callable[[int], None], ...]]:
    """Progress bars on stderr (on a terminal only), one per (name, events) task, and the
    callbacks that advance them."""
    progress = Progress(
        TextColumn("[bold]{task.description}[/]"), BarColumn(), MofNCompleteColumn(),
        TextColumn("events"), TimeRemainingColumn(), console=err, transient=True,
        disable=is_hidden or not err.is_terminal,
    )  # fmt: skip
    with progress:
        yield tuple(
            functools.partial(_advance, progress, progress.add_task(name, total=total))
            for name, total in tasks
        )


def _advance(progress: Progress, task_id: TaskID, count: int) -> None:
    progress.advance(task_id, count)


def _print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")
