"""`ledger sagas list|show|retry`: inspect sagas and send a parked one on.

They read the saga service's schema in PostgreSQL directly (the servers `operator_settings`
finds), so they work whether or not the services run. Exit codes: 0 done, 1 the saga is
unknown, not parked, or the database does not answer; 2 bad arguments.
"""

from __future__ import annotations

import asyncio
import getpass
import re
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Final, TypeVar

import orjson
import typer
from rich.console import Console
from rich.text import Text

from eventstore import ConcurrencyError, EventStore, StreamNotFound
from ledger.cli import saga_reads, saga_views
from ledger.cli.failures import err, fail, reported_failures, settings_or_exit
from ledger.cli.run import DataDirOption
from ledger.cli.saga_timeline import story
from ledger.cli.target import operator_settings
from ledger.settings import Settings
from saga.api import ID_PATTERN, MAX_PAGE_ITEMS
from saga.contracts import SagaStatus
from saga.log import NotParked

app = typer.Typer(no_args_is_help=True)
T = TypeVar("T")
_SAGA_ID: Final = re.compile(ID_PATTERN)


def _saga_id(value: str) -> str:
    if not _SAGA_ID.match(value):
        raise typer.BadParameter(f"{value!r} is not a saga id (letters, digits, _ . : -)")
    return value


SagaId = Annotated[str, typer.Argument(help="The saga's id (the transfer's or trade's id).",
                                       callback=_saga_id, show_default=False)]  # fmt: skip
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@app.command("list")
def list_sagas(
    status: Annotated[
        SagaStatus | None, typer.Option("--status", help="Only sagas in this status.")
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=MAX_PAGE_ITEMS, help="At most this many rows.")
    ] = 50,
    as_json: JsonOption = False,
    data_dir: DataDirOption = None,
) -> None:
    """List sagas, most recently changed first, with the counts by status."""

    async def read(store: EventStore) -> tuple[list[saga_reads.Run], dict[SagaStatus, int]]:
        return (await saga_reads.recent_runs(store, status, limit),
                await saga_reads.counts_by_status(store))  # fmt: skip

    with _settings(data_dir) as settings:
        runs, counts = _with_store(settings, read)
    if as_json:
        _print_json(saga_views.runs_document(runs, counts))
    else:
        Console().print(saga_views.runs_table(runs, counts))


@app.command("show")
def show(saga_id: SagaId, as_json: JsonOption = False, data_dir: DataDirOption = None) -> None:
    """Show one saga: its legs, every step as a timeline, and how it ended or why it is
    parked."""
    with _settings(data_dir) as settings:
        loaded = _with_store(settings, lambda store: saga_reads.loaded(store, saga_id), saga_id)
    told = story(loaded.state, loaded.events)
    if as_json:
        _print_json(saga_views.story_document(told, settings.assets()))
    else:
        Console().print(saga_views.story_view(told, settings.assets()))


@app.command("retry")
def retry(
    saga_id: SagaId,
    by: Annotated[
        str | None,
        typer.Option("--by", help="Who retries, recorded in the saga's log"
                                  " (default: your login name)."),
    ] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Send a parked (requires_intervention) saga on: an orchestrator tries its failed step
    afresh. The same rule as POST /v1/sagas/{id}/retry: only a parked saga is retried."""
    who = by or _user()
    with _settings(data_dir) as settings:
        state = _with_store(settings, lambda store: saga_reads.retry(store, saga_id, who),
                            saga_id)  # fmt: skip
    Console().print(
        Text.assemble(f"saga {saga_id} retried by {who}: ",
                      saga_views.status_text(state.status),
                      f" again; follow it with: ledger sagas show {saga_id}"),
        soft_wrap=True,
    )  # fmt: skip


@contextmanager
def _settings(data_dir: Path | None) -> Iterator[Settings]:
    """The operator's settings, on servers found or started for the command."""
    settings = settings_or_exit()
    with reported_failures(), operator_settings(settings, data_dir, err) as resolved:
        yield resolved


def _with_store(
    settings: Settings, work: Callable[[EventStore], Awaitable[T]], saga_id: str | None = None
) -> T:
    """Run `work` on the saga store; the failures particular to sagas are one line here,
    the others (servers that do not answer) in `reported_failures`."""

    async def run() -> T:
        async with saga_reads.saga_store(settings) as store:
            return await work(store)

    try:
        return asyncio.run(run())
    except StreamNotFound as error:
        fail(f"no saga {saga_id or error.stream_id}")
    except NotParked as error:
        fail(f"{error}; only a parked (requires_intervention) saga is retried")
    except ConcurrencyError:
        fail("the saga changed while retrying it; look at it again and retry if still parked")


def _print_json(document: object) -> None:
    typer.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in this environment
        return "operator"
