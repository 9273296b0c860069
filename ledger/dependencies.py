"""FastAPI dependencies that hand routes their host and their service's runtime.

The dependencies are `async def` although they never wait: FastAPI runs a plain `def`
dependency in a worker thread, a thread hand-off (and a GIL hand-back) per request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request

from ledger.host import Runtime, ServiceHost


def host_of(request: Request) -> ServiceHost:
    """The host serving this request."""
    host: ServiceHost = request.app.state.host
    return host


async def _host(request: Request) -> ServiceHost:
    return host_of(request)


HostDep = Annotated[ServiceHost, Depends(_host)]


def runtime_of(name: str) -> Callable[[Request], Awaitable[Runtime]]:
    """A dependency giving a route its service's runtime (store, NATS, settings)."""

    async def dependency(request: Request) -> Runtime:
        return host_of(request).runtimes[name]

    return dependency
