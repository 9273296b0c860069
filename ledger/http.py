"""The HTTP face of a host: middleware, health, metrics, event streams, and service routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ledger import metrics
from ledger.auth import authorize_route, install_access_control
from ledger.dependencies import HostDep
from ledger.host import ServiceHost
from ledger.problems import (
    document_problems,
    install_problem_handlers,
    problem_response,
    problem_responses,
)
from ledger.request_context import RequestContextMiddleware
from ledger.startup import start_unless_stopped
from ledger.streaming import router as streaming_router


def create_app(host: ServiceHost, *, manage_host: bool = True) -> FastAPI:
    """The FastAPI app of `host`; with `manage_host`, the app's lifespan starts and stops it."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        is_started = manage_host and await start_unless_stopped(host)
        try:
            yield  # not started: uvicorn, told to exit by the same signal, shuts down now
        finally:
            if is_started:
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
    app.add_middleware(RequestContextMiddleware)  # outermost of ours
    _add_platform_routes(app)
    app.include_router(streaming_router)
    for service in host.services:
        router = service.router()
        if router is not None:
            app.include_router(router)
    return app


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
