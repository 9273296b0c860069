"""The HTTP face of a host: middleware, health, metrics, event streams, and service routes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Final

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ledger import context, metrics
from ledger.auth import authorize_route, install_access_control
from ledger.dependencies import HostDep
from ledger.host import ServiceHost
from ledger.problems import (
    document_problems,
    install_problem_handlers,
    internal_error_response,
    problem_response,
    problem_responses,
)
from ledger.streaming import router as streaming_router

_UNMATCHED_ROUTE: Final = "unmatched"


def create_app(host: ServiceHost, *, manage_host: bool = True) -> FastAPI:
    """The FastAPI app of `host`; with `manage_host`, the app's lifespan starts and stops it."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_host:
            await host.start()
        try:
            yield
        finally:
            if manage_host:
                await host.stop()

    app = FastAPI(
        title="Ledger",
        version="0.1.0",
        description="An event-sourced financial ledger.",
        lifespan=lifespan,
        dependencies=[Depends(authorize_route)],  # every route's scopes: ledger.auth.policy
    )
    app.state.host = host
    install_problem_handlers(app)
    document_problems(app)
    install_access_control(app, host.settings)  # inside the context middleware added next
    app.middleware("http")(_context_and_metrics)
    _add_platform_routes(app)
    app.include_router(streaming_router)
    for service in host.services:
        router = service.router()
        if router is not None:
            app.include_router(router)
    return app


async def _context_and_metrics(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """Bind the request's context, answer with it in headers, and time the request.

    An unhandled error is answered here, as a 500 problem, so that answer too carries the
    correlation id it tells the client to quote. The actor is never taken from an HTTP
    client's headers (anyone could claim to be anyone); authentication will set it.
    """
    started = time.perf_counter()
    with context.bound(context.from_client_headers(dict(request.headers))) as bound:
        try:
            response = await call_next(request)
        except Exception as error:
            response = internal_error_response(request, error, bound.correlation_id)
    response.headers[context.CORRELATION_HEADER] = bound.correlation_id
    response.headers[context.TRACEPARENT_HEADER] = bound.traceparent
    metrics.http_request_seconds.labels(
        _route_template(request), request.method, str(response.status_code)
    ).observe(time.perf_counter() - started)
    return response


def _route_template(request: Request) -> str:
    """The route's path template, so metrics have one series per route, not per id."""
    route = request.scope.get("route")
    return str(getattr(route, "path", _UNMATCHED_ROUTE))


def _add_platform_routes(app: FastAPI) -> None:
    @app.get("/health/live", tags=["health"])
    async def live() -> dict[str, str]:
        """The process is up."""
        return {"status": "live"}

    @app.get("/health/ready", tags=["health"], response_model=None,
             responses=problem_responses(503))
    async def ready(request: Request, host: HostDep) -> JSONResponse:
        """200 when PostgreSQL and NATS answer, 503 (problem+json) naming what does not."""
        checks = await host.readiness()
        if all(checks.values()):
            return JSONResponse({"status": "ready", "checks": checks})
        down = ", ".join(name for name, is_up in checks.items() if not is_up)
        return problem_response(
            503, f"not ready: {down} not answering", "not_ready", request.url.path, checks=checks
        )

    @app.get("/metrics", tags=["health"], response_class=Response)
    async def prometheus(host: HostDep) -> Response:
        """Prometheus text exposition of every ledger metric."""
        await host.observe()
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)
