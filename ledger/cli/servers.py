"""Which servers a command talks to: the configured ones, or embedded ones it starts."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

from ledger.embedded import servers
from ledger.settings import Settings


@contextmanager
def resolved_servers(
    settings: Settings, data_dir: Path, *, allow_embedded: bool, console: Console
) -> Iterator[Settings]:
    """Settings whose database and NATS URLs are set, starting embedded servers for unset ones.

    Raises ValueError when a server is unset and embedded ones are not allowed.
    """
    database_url, nats_url = settings.database_url, settings.nats_url
    if not allow_embedded and (database_url is None or not settings.nats_servers):
        missing = "LEDGER_DATABASE_URL" if database_url is None else "LEDGER_NATS_URL"
        raise ValueError(f"{missing} is not set and --no-embedded was given")
    with servers(data_dir, database_url, nats_url if settings.nats_servers else None) as (
        dsn,
        nats,
    ):
        if database_url is None:
            console.print(f"[dim]embedded PostgreSQL at {dsn} (data in {data_dir})[/]")
        if not settings.nats_servers:
            console.print(f"[dim]embedded NATS at {nats} (data in {data_dir})[/]")
        yield settings.model_copy(update={"database_url": dsn, "nats_url": nats})
