"""`ledger projections list|rebuild`: see the read models, rebuild them from the events, or
verify them against a rebuild.

A rebuild replays the event store into a shadow table while the API keeps serving, then
swaps it in atomically (eventstore.rebuild, docs/projection-rebuild.md). `--verify` swaps
nothing: it prints every row where the live table and the rebuild differ and exits 1 if any.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from eventstore import RebuildReport, RowDifference, rebuild, replay_estimate
from ledger.cli.connections import ServiceDatabase, service_databases
from ledger.cli.failures import (
    BAD_ARGUMENTS,
    FAILED,
    err,
    fail,
    reported_failures,
    settings_or_exit,
)
from ledger.cli.projection_reads import (
    ProjectionInfo,
    Target,
    check_rebuildable,
    projection_info,
    store_for,
    targets,
)
from ledger.cli.run import DataDirOption
from ledger.cli.target import operator_settings
from ledger.host import Service
from ledger.services import available_services
from ledger.settings import Settings

app = typer.Typer(no_args_is_help=True)
out = Console()

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@app.command("list")
def list_projections(as_json: JsonOption = False, data_dir: DataDirOption = None) -> None:
    """List every service's projections: kind, the position they reflect, and their rows."""
    chosen = targets(list(available_services().values()))
    settings = settings_or_exit()
    with reported_failures(), operator_settings(settings, data_dir, err) as resolved:
        infos = asyncio.run(_infos(resolved, chosen))
    if as_json:
        _print_json([info.as_document() for info in infos])
        return
    table = Table("projection", "service", "kind", "table", "position", "rows",
                  title="projections")  # fmt: skip
    for info in infos:
        table.add_row(
            info.name, info.service, info.kind, info.table,
            _or_dash(info.position), _or_dash(info.rows, "[yellow]no table[/]"),
        )  # fmt: skip
    out.print(table)


async def _infos(settings: Settings, chosen: Sequence[Target]) -> list[ProjectionInfo]:
    services = _distinct_services(chosen)
    async with service_databases(settings, services) as databases:
        by_service = {database.name: database for database in databases}
        return [await projection_info(by_service[t.service.name], t) for t in chosen]


@app.command("rebuild")
def rebuild_projections(
    name: Annotated[
        str | None,
        typer.Argument(
            help="The projection to rebuild (see: ledger projections list).", show_default=False
        ),
    ] = None,
    every: Annotated[bool, typer.Option("--all", help="Rebuild every projection.")] = False,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Only compare a rebuild with the live table, print every"
            " differing row, exit 1 if any differ; swap nothing.",
        ),
    ] = False,
    as_json: JsonOption = False,
    data_dir: DataDirOption = None,
) -> None:
    """Replay the events into a shadow table and swap it in atomically while the API keeps
    serving; with --verify, compare instead."""
    chosen = _chosen_targets(name, every)
    settings = settings_or_exit()
    with reported_failures(), operator_settings(settings, data_dir, err) as resolved:
        # The bar is for a person watching; a script reads the report.
        is_shown = err.is_terminal and not as_json
        reports = asyncio.run(_rebuild(resolved, chosen, verify, show_progress=is_shown))
    if as_json:
        _print_json([_report_document(target, report) for target, report in reports])
    else:
        _print_reports(reports, verify)
    differing = [f"{target.name} ({_rows(len(report.differences))})"
                 for target, report in reports if report.differences]  # fmt: skip
    if differing:
        fail(f"live tables differ from their rebuild: {', '.join(differing)}", FAILED)


def _chosen_targets(name: str | None, every: bool) -> list[Target]:
    known = targets(list(available_services().values()))
    if every == (name is not None):
        fail("name one projection or give --all (see: ledger projections list)", BAD_ARGUMENTS)
    if every:
        return known
    found = [target for target in known if target.name == name]
    if not found:
        names = ", ".join(target.name for target in known)
        fail(f"unknown projection {name!r} (known: {names})", BAD_ARGUMENTS)
    return found


async def _rebuild(
    settings: Settings, chosen: Sequence[Target], verify: bool, *, show_progress: bool
) -> list[tuple[Target, RebuildReport]]:
    reports = []
    async with service_databases(settings, _distinct_services(chosen)) as databases:
        by_service = {database.name: database for database in databases}
        with _progress_bar(show_progress) as progress:
            for target in chosen:
                database = by_service[target.service.name]
                await check_rebuildable(database, target, verify)
                report = await _rebuild_one(database, target, verify, progress)
                reports.append((target, report))
    return reports


async def _rebuild_one(
    database: ServiceDatabase, target: Target, verify: bool, progress: Progress
) -> RebuildReport:
    """One rebuild, with a progress bar of the events replayed."""
    store = store_for(database, target)
    projection = next(p for p in store.inline_projections if p is target.projection)
    estimate = await replay_estimate(store, projection)
    verb = "verifying" if verify else "rebuilding"
    task = progress.add_task(f"{verb} {target.name}", total=max(estimate, 1))
    done = 0

    def advance(events: int) -> None:
        nonlocal done
        done += events
        # Appends go on during the replay: the estimate may be passed.
        progress.update(task, completed=done, total=max(estimate, done, 1))

    report = await rebuild(store, projection, verify=verify, progress=advance)
    progress.update(task, total=max(report.events, 1), completed=max(report.events, 1),
                    rate=report.events_per_s)  # fmt: skip
    return report


class _RateColumn(ProgressColumn):
    """Events replayed per second."""

    def render(self, task: Task) -> Text:
        """The speed over the last moments while running; the whole replay's when done."""
        speed = task.fields.get("rate") or task.speed
        return Text(f"{speed:,.0f} events/s" if speed else "- events/s", style="cyan")


def _progress_bar(is_shown: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("events"),
        _RateColumn(), TextColumn("elapsed"), TimeElapsedColumn(), TextColumn("left"),
        TimeRemainingColumn(), console=err, disable=not is_shown, transient=False,
    )  # fmt: skip


def _print_reports(reports: Sequence[tuple[Target, RebuildReport]], verify: bool) -> None:
    summary = Table("projection", "service", "events", "seconds", "events/s",
                    "differences" if verify else "result",
                    title="verified against a rebuild" if verify else "rebuilt")  # fmt: skip
    for target, report in reports:
        if verify:
            outcome = (f"[red]{len(report.differences)}[/]" if report.differences
                       else "[green]none[/]")  # fmt: skip
        else:
            outcome = "[green]swapped in[/]" if report.swapped else "[red]not swapped[/]"
        summary.add_row(
            target.name,
            target.service.name,
            f"{report.events:,}",
            f"{report.elapsed_s:.2f}",
            f"{report.events_per_s:,.0f}",
            outcome,
        )
    out.print(summary)
    for target, report in reports:
        if report.differences:
            out.print(_differences_table(target, report.differences))


def _differences_table(target: Target, differences: Sequence[RowDifference]) -> Table:
    """Each differing row: its key, then only the columns that differ, live vs rebuilt."""
    table = Table("key", "column", "live", "rebuilt",
                  title=f"{target.name}: {_rows(len(differences))} differ")  # fmt: skip
    for difference in differences:
        key = ", ".join(f"{column}={value}" for column, value in difference.key.items())
        if difference.live is None or difference.rebuilt is None:
            present = difference.live if difference.live is not None else difference.rebuilt
            shown = _json(present)
            live, rebuilt = ("[red]missing[/]", shown) if difference.live is None else (
                shown, "[red]missing[/]")  # fmt: skip
            table.add_row(key, "(row)", live, rebuilt)
            continue
        columns = [*difference.live, *(c for c in difference.rebuilt if c not in difference.live)]
        for column in columns:
            live_value, rebuilt_value = difference.live.get(column), difference.rebuilt.get(column)
            if live_value != rebuilt_value:
                table.add_row(key, column, _json(live_value), _json(rebuilt_value))
    return table


def _report_document(target: Target, report: RebuildReport) -> dict[str, Any]:
    return {
        "projection": target.name, "service": target.service.name, "events": report.events,
        "elapsed_s": round(report.elapsed_s, 3), "events_per_s": round(report.events_per_s),
        "swapped": report.swapped,
        "differences": [
            {"key": d.key, "live": d.live, "rebuilt": d.rebuilt} for d in report.differences
        ],
    }  # fmt: skip


def _distinct_services(chosen: Sequence[Target]) -> list[Service]:
    services: dict[str, Service] = {}
    for target in chosen:
        services.setdefault(target.service.name, target.service)
    return list(services.values())


def _rows(count: int) -> str:
    return f"{count:,} row" if count == 1 else f"{count:,} rows"


def _or_dash(value: int | None, missing: str = "[dim]-[/]") -> str:
    return missing if value is None else f"{value:,}"


def _json(value: object) -> str:
    return orjson.dumps(value).decode()


def _print_json(document: object) -> None:
    typer.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
