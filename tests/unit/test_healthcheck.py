"""The containers' health check script: 0 for a 200, 1 for anything else or no answer."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "deploy" / "healthcheck.py"


class _Health(http.server.BaseHTTPRequestHandler):
    """Live always; ready never (as while PostgreSQL or NATS does not answer)."""

    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health/live" else 503)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test reads exit codes, not logs."""


@pytest.fixture
def port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


def probe(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], env={"LEDGER_HTTP_PORT": str(port)},
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_a_200_is_healthy(port: int) -> None:
    assert probe(port, "/health/live").returncode == 0


def test_the_default_path_is_liveness(port: int) -> None:
    assert probe(port).returncode == 0


def test_a_503_is_unhealthy_and_says_why(port: int) -> None:
    probed = probe(port, "/health/ready")

    assert probed.returncode == 1
    assert "503" in probed.stderr


def test_no_answer_is_unhealthy() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]  # nothing listens once the socket closes

    assert probe(closed_port, "/health/live").returncode == 1
