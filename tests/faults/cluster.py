"""A three-node NATS JetStream cluster on loopback ports, from the embedded nats-server binary.

Each node has its own client port, route port and store under one directory, and routes to
the other two; `wait_ready` returns once JetStream answers on every node (a meta leader is
elected), `stream_leader` names the node that leads a stream, and `kill` SIGKILLs a node.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Self

import nats
import nats.errors
from nats.js.errors import Error as JetStreamError

from ledger.embedded import free_port
from ledger.embedded.nats_server import _nats_server_binary

CLUSTER_NAME: Final = "ledger-faults"
READY_TIMEOUT_S: Final = 30.0


@dataclass
class Node:
    """One nats-server of the cluster."""

    name: str
    port: int
    route_port: int
    store_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Its client URL."""
        return f"nats://127.0.0.1:{self.port}"


class NatsCluster:
    """Three routed nats-servers with JetStream; a context manager that stops them all."""

    def __init__(self, root: Path, size: int = 3) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.nodes = [Node(f"n{index}", free_port(), free_port(), root / f"n{index}",
                           root / f"n{index}.log") for index in range(1, size + 1)]  # fmt: skip

    @property
    def seed_urls(self) -> str:
        """Every node's URL, comma-separated, as LEDGER_NATS_URL takes them."""
        return ",".join(node.url for node in self.nodes)

    def live_urls(self) -> list[str]:
        """The URLs of the nodes still running."""
        return [node.url for node in self.nodes if node.process and node.process.poll() is None]

    def start(self) -> None:
        """Spawn every node; `wait_ready` tells when the cluster serves JetStream."""
        routes = ",".join(f"nats://127.0.0.1:{node.route_port}" for node in self.nodes)
        for node in self.nodes:
            with node.log_path.open("ab") as log:
                node.process = subprocess.Popen(
                    [str(_nats_server_binary()), "-js", "-a", "127.0.0.1", "-p", str(node.port),
                     "-n", node.name, "-sd", str(node.store_dir), "--cluster_name", CLUSTER_NAME,
                     "--cluster", f"nats://127.0.0.1:{node.route_port}", "--routes", routes],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip

    async def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> float:
        """Seconds until every node answers a JetStream request (the cluster has a meta
        leader and all three are in it)."""
        started_s = time.monotonic()
        for node in self.nodes:
            while not await _serves_jetstream(node.url):
                if node.process is None or node.process.poll() is not None:
                    raise AssertionError(f"{node.name} exited:\n{_tail(node.log_path)}")
                if time.monotonic() - started_s > timeout_s:
                    raise AssertionError(f"{node.name} serves no JetStream after {timeout_s} s:"
                                         f"\n{_tail(node.log_path)}")  # fmt: skip
                await asyncio.sleep(0.2)
        return time.monotonic() - started_s

    async def stream_leader(self, stream: str) -> Node:
        """The node leading `stream`'s replicas now."""
        nc = await nats.connect(servers=self.live_urls(), max_reconnect_attempts=2,
                                error_cb=quiet)  # fmt: skip
        try:
            info = await nc.jetstream().stream_info(stream)
        finally:
            await nc.close()
        assert info.cluster is not None, f"{stream} is not clustered"
        assert info.cluster.leader, f"{stream} has no leader"
        return next(node for node in self.nodes if node.name == info.cluster.leader)

    def kill(self, node: Node) -> None:
        """SIGKILL the node and reap it."""
        assert node.process is not None, f"{node.name} is not started"
        if node.process.poll() is None:
            os.kill(node.process.pid, signal.SIGKILL)
        node.process.wait()

    def stop(self) -> None:
        """SIGTERM every node still running (SIGKILL after 15 s) and reap them all."""
        for node in self.nodes:
            process, node.process = node.process, None
            if process is None:
                continue
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


async def _serves_jetstream(url: str) -> bool:
    try:
        nc = await nats.connect(servers=[url], max_reconnect_attempts=0, connect_timeout=1,
                                allow_reconnect=False, error_cb=quiet)  # fmt: skip
    except (nats.errors.Error, OSError):
        return False
    try:
        await nc.jetstream().account_info()
    except (JetStreamError, nats.errors.Error, TimeoutError):
        return False
    finally:
        await nc.close()
    return True


async def quiet(error: Exception) -> None:
    """A NATS client's error callback for probes: a refused probe is an answer, not news."""


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
