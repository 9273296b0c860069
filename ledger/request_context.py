"""The outermost middleware of the app: each request's context, its answer headers, its timing.

A plain ASGI middleware rather than a function under `app.middleware("http")`: Starlette runs
those as a `BaseHTTPMiddleware`, which puts every request through a task group and memory
streams (and wraps streamed answers, such as the event streams, in them too). This one only
wraps `send`.
"""

from __future__ import annotations

import time
from typing import Final

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ledger import context, metrics
from ledger.auth.policy import template_of
from ledger.problems import internal_error_response

_UNMATCHED_ROUTE: Final = "unmatched"
_ANSWER_HEADERS: Final = frozenset(
    name.lower().encode("latin-1") for name in (context.CORRELATION_HEADER,
                                                context.TRACEPARENT_HEADER)
)  # fmt: skip


class RequestContextMiddleware:
    """Bind the request's context, answer with it in headers, and time the request.

    An unhandled error is answered here, as a 500 problem, so that answer too carries the
    correlation id it tells the client to quote. The actor is never taken from an HTTP
    client's headers (anyone could claim to be anyone); authentication sets it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = {name.decode("latin-1"): value.decode("latin-1")
                 for name, value in scope["headers"]}  # fmt: skip
        with context.bound(context.from_client_headers(given)) as bound:
            is_answering = False
            added = [
                (context.CORRELATION_HEADER.encode("latin-1"), bound.correlation_id.encode()),
                (context.TRACEPARENT_HEADER.encode("latin-1"), bound.traceparent.encode()),
            ]

            async def answer(message: Message) -> None:
                nonlocal is_answering
                if message["type"] == "http.response.start":
                    is_answering = True
                    kept = [(name, value) for name, value in message.get("headers", [])
                            if name.lower() not in _ANSWER_HEADERS]  # fmt: skip
                    message = {**message, "headers": [*kept, *added]}
                    metrics.http_request_seconds.labels(
                        _route_template(scope), scope["method"], str(message["status"])
                    ).observe(time.perf_counter() - started)
                await send(message)

            try:
                await self.app(scope, receive, answer)
            except Exception as error:
                if is_answering:
                    raise  # too late for another answer; the server closes the connection
                response = internal_error_response(Request(scope), error, bound.correlation_id)
                await response(scope, receive, answer)


def _route_template(scope: Scope) -> str:
    """The route's path template, so metrics have one series per route, not per id.

    The access gate answers some requests (401, 413, 429) before the router sees them; they
    are timed under the template of the route they were for, from the table of scopes.
    """
    route = scope.get("route")
    if route is not None:
        return str(getattr(route, "path", _UNMATCHED_ROUTE))
    return template_of(scope["path"]) or _UNMATCHED_ROUTE
