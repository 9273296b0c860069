"""One owner of the embedded servers under a data directory at a time.

A second `ledger up` on the same directory adopted the first one's PostgreSQL, started a
second nats-server on the same JetStream store, and stopped that PostgreSQL when it exited,
under the first one's feet (found in review). The owner holds an exclusive `flock` on
`<data dir>/embedded.lock` for as long as it runs; the kernel releases it when the process
ends, however it ends, so a killed owner leaves no stale lock. Operator commands that only
attach to running servers take no lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from ledger.embedded._common import EmbeddedServerError

LOCK_FILE = "embedded.lock"


@contextlib.contextmanager
def owning(data_dir: Path) -> Iterator[None]:
    """Hold the data directory's lock for the block; EmbeddedServerError naming the owner's
    pid when another process holds it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    # Opened non-inheritable (PEP 446): the servers started under it do not hold it too.
    with (data_dir / LOCK_FILE).open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            owner = lock.read().strip() or "unknown"
            raise EmbeddedServerError(
                f"another ledger process (pid {owner}) runs the embedded servers in {data_dir}:"
                " stop it first, or give this one another --data-dir"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
