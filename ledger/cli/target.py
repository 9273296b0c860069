"""Which servers an operator command talks to.

`ledger up` may be running on embedded servers under the data directory. An operator
command (migrate, status, projections, audit, sagas) attaches to those servers and leaves
them running; when they are not running it starts them for the command and stops them
after. Configured servers (`LEDGER_DATABASE_URL`, `LEDGER_NATS_URL`) always win.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from rich.console import Console

from ledger.embedded import EmbeddedNats, EmbeddedPostgres
from ledger.embedded._common import HOST, accepts_tcp
from ledger.embedded._lock import owning
from ledger.settings import Settings


def running_embedded_postgres(data_dir: Path) -> str | None:
    """The DSN of an embedded PostgreSQL running under `data_dir`, if one answers."""
    pid_file = data_dir / "postgres" / "pgdata" / "postmaster.pid"
    try:
        # postmaster.pid: pid, data dir, start time, port, ... (one per line).
        port = int(pid_file.read_text().splitlines()[3])
    except (OSError, IndexError, ValueError):
        return None
    return f"postgresql://postgres@{HOST}:{port}/postgres" if accepts_tcp(port) else None


def running_embedded_nats(data_dir: Path) -> str | None:
    """The URL of the embedded NATS last started under `data_dir`, if it answers."""
    try:
        port = int((data_dir / "nats" / "nats.port").read_text().strip())
    except (OSError, ValueError):
        return None
    return f"nats://{HOST}:{port}" if accepts_tcp(port) else None


@contextmanager
def operator_settings(
    settings: Settings,
    data_dir: Path | None,
    console: Console,
    *,
    need_nats: bool = False,
) -> Iterator[Settings]:
    """`settings` with the database URL (and the NATS URL when `need_nats`) filled in:
    configured, else the running embedded servers under the data directory, else embedded
    servers started for the block and stopped after it."""
    data_dir = data_dir or settings.data_dir
    wants_postgres = settings.database_url is None
    wants_nats = need_nats and not settings.nats_servers
    dsn = running_embedded_postgres(data_dir) if wants_postgres else None
    url = running_embedded_nats(data_dir) if wants_nats else None
    update: dict[str, str] = {}
    with ExitStack() as stack:
        if (wants_postgres and dsn is None) or (wants_nats and url is None):
            stack.enter_context(owning(data_dir))  # it starts servers: it owns them meanwhile
        if wants_postgres:
            if dsn is None:
                console.print(f"[dim]starting the embedded PostgreSQL in {data_dir}[/]")
                dsn = stack.enter_context(EmbeddedPostgres(data_dir / "postgres")).dsn
            update["database_url"] = dsn
        if wants_nats:
            if url is None:
                console.print(f"[dim]starting the embedded NATS in {data_dir}[/]")
                url = stack.enter_context(EmbeddedNats(data_dir / "nats")).url
            update["nats_url"] = url
        yield settings.model_copy(update=update)
