"""FastAPI dependencies that hand routes their host and their service's runtime."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request

from ledger.host import Runtime, ServiceHost


def host_of(request: Request) -> ServiceHost:
    """The host serving this request."""
    host: ServiceHost = request.app.state.host
    return host


HostDep = Annotated[ServiceHost, Depends(host_of)]


def runtime_of(name: str) -> Callable[[Request], Runtime]:
    """A dependency giving a route its service's runtime (store, NATS, settings)."""

    def dependency(request: Request) -> Runtime:
        return host_of(request).runtimes[name]

    return dependency
