"""What both embedded servers share: ports, logs, errors."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

logger = logging.getLogger("ledger.embedded")

HOST = "127.0.0.1"
RESERVED_PORTS = frozenset({5432, 4222})
MAX_PORT_ATTEMPTS = 20
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.05
LOG_TAIL_LINES = 40
PG_SYSTEM_USER = "ledger-postgres"
# sun_path holds 108 bytes on Linux (104 on macOS) including the NUL byte.
MAX_SOCKET_PATH_BYTES = 100
PG_SERVER_SETTINGS = {
    "max_connections": "200",
    "shared_buffers": "256MB",
    # Benchmarks must measure durable commits: never trade fsync for speed here.
    "fsync": "on",
    "synchronous_commit": "on",
}
INSTALL_HINT = "install the extra with: pip install 'ledger[embedded]'"


class EmbeddedServerError(Exception):
    """An embedded server could not be found, started or stopped."""


def free_port(host: str = HOST) -> int:
    """Return a TCP port on ``host`` that was free a moment ago; never 5432 or 4222.

    Raises:
        EmbeddedServerError: if the operating system keeps handing out reserved ports.
    """
    for _ in range(MAX_PORT_ATTEMPTS):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        if port not in RESERVED_PORTS:
            return port
    raise EmbeddedServerError(f"no free port on {host} after {MAX_PORT_ATTEMPTS} attempts")


def is_port_free(port: int) -> bool:
    # SO_REUSEADDR as the servers set it, so a port whose old connections linger in
    # TIME_WAIT counts as free, while one with a live listener does not.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def checked_port(port: int | None) -> int | None:
    if port is not None and port in RESERVED_PORTS:
        raise EmbeddedServerError(
            f"port {port} is reserved for the machine's own servers; pass another or None"
        )
    return port


def choose_port(requested: int | None, port_file: Path) -> int:
    """The requested port, else the one remembered in ``port_file`` if free, else a new one."""
    if requested is not None:
        return requested
    try:
        remembered = int(port_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        remembered = None
    if remembered is not None and remembered not in RESERVED_PORTS and is_port_free(remembered):
        return remembered
    port = free_port()
    port_file.write_text(f"{port}\n")
    return port


def log_tail(log_path: Path) -> str:
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"(no log at {log_path})"
    return "\n".join(lines[-LOG_TAIL_LINES:])


def accepts_tcp(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1.0):
            return True
    except OSError:
        return False

