"""Which servers a command talks to: the configured ones, or embedded ones it starts."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from rich.console import Console

from ledger.embedded import EmbeddedNats, EmbeddedPostgres
from ledger.settings import Settings


@contextmanager
def resolved_servers(
    settings: Settings, data_dir: Path, *, allow_embedded: bool, console: Console
) -> Iterator[Settings]:
    """Settings whose database and NATS URLs are set, starting embedded servers for unset ones.

    Raises ValueError when a server is unset and embedded ones are not allowed.
    """
    with ExitStack() as stack:
        updates: dict[str, str] = {}
        if settings.database_url is None:
            if not allow_embedded:
                raise ValueError("LEDGER_DATABASE_URL is not set and --no-embedded was given")
            postgres = stack.enter_context(EmbeddedPostgres(data_dir / "postgres"))
            updates["database_url"] = postgres.dsn
            console.print(f"[dim]embedded PostgreSQL at {postgres.dsn} (data in {data_dir})[/]")
        if not settings.nats_servers:
            if not allow_embedded:
                raise ValueError("LEDGER_NATS_URL is not set and --no-embedded was given")
            nats_server = stack.enter_context(EmbeddedNats(data_dir / "nats"))
            updates["nats_url"] = nats_server.url
            console.print(f"[dim]embedded NATS at {nats_server.url} (data in {data_dir})[/]")
        yield settings.model_copy(update=updates)
