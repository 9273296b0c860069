"""Problem details (RFC 9457): every HTTP error is `application/problem+json`, never a trace."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from eventstore import (
    ConcurrencyError,
    DuplicateEventError,
    InvalidEvent,
    StoreUnavailable,
    StreamNotFound,
)

PROBLEM_MEDIA_TYPE: Final = "application/problem+json"
_log = logging.getLogger(__name__)


class Problem(Exception):
    """An error a client caused or must know about, answered as problem+json."""

    def __init__(
        self, status: int, detail: str, *, code: str | None = None, **extensions: Any
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.code = code or HTTPStatus(status).phrase.lower().replace(" ", "_")
        self.extensions = extensions


def problem_body(
    status: int, detail: str, code: str, instance: str, **extensions: Any
) -> dict[str, Any]:
    """The JSON body of a problem+json answer."""
    return {
        "type": f"https://ledger.dev/problems/{code}",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "instance": instance,
        "code": code,
        **extensions,
    }


def problem_response(
    status: int, detail: str, code: str, instance: str, **extensions: Any
) -> JSONResponse:
    """A problem+json response."""
    body = problem_body(status, detail, code, instance, **extensions)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE)


def install_problem_handlers(app: FastAPI) -> None:
    """Answer every error of `app` as problem+json."""

    @app.exception_handler(Problem)
    async def on_problem(request: Request, error: Problem) -> JSONResponse:
        return problem_response(
            error.status, error.detail, error.code, request.url.path, **error.extensions
        )

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = [
            {"location": list(item.get("loc", ())), "message": item.get("msg", "")}
            for item in error.errors()
        ]
        return problem_response(
            422, "the request is not valid", "validation_failed", request.url.path, errors=errors
        )

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = HTTPStatus(error.status_code).phrase.lower().replace(" ", "_")
        return problem_response(error.status_code, str(error.detail), code, request.url.path)

    @app.exception_handler(StreamNotFound)
    async def on_not_found(request: Request, error: StreamNotFound) -> JSONResponse:
        return problem_response(404, str(error), "not_found", request.url.path)

    @app.exception_handler(ConcurrencyError)
    async def on_conflict(request: Request, error: ConcurrencyError) -> JSONResponse:
        return problem_response(409, str(error), "conflict", request.url.path)

    @app.exception_handler(DuplicateEventError)
    async def on_duplicate(request: Request, error: DuplicateEventError) -> JSONResponse:
        return problem_response(409, str(error), "duplicate", request.url.path)

    @app.exception_handler(InvalidEvent)
    async def on_invalid_event(request: Request, error: InvalidEvent) -> JSONResponse:
        return problem_response(422, str(error), "invalid", request.url.path)

    @app.exception_handler(StoreUnavailable)
    async def on_unavailable(request: Request, error: StoreUnavailable) -> JSONResponse:
        _log.warning("store unavailable on %s: %s", request.url.path, error)
        return problem_response(503, "the ledger's database is unavailable", "unavailable",
                                request.url.path)

    @app.exception_handler(Exception)
    async def on_bug(request: Request, error: Exception) -> JSONResponse:
        # ledger.http's middleware answers first, with the correlation id in headers; this
        # is the backstop for an error raised outside it.
        return internal_error_response(request, error)


def internal_error_response(
    request: Request, error: Exception, correlation_id: str | None = None
) -> JSONResponse:
    """Log an unhandled `error` with its trace; answer a 500 problem that reveals nothing of
    it, only the correlation id to quote (also in the `X-Correlation-Id` header)."""
    _log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
    detail = "an internal error occurred; it has been logged"
    if correlation_id is None:
        return problem_response(500, detail, "internal_error", request.url.path)
    return problem_response(
        500, f"{detail} under correlation id {correlation_id}", "internal_error",
        request.url.path, correlation_id=correlation_id,
    )  # fmt: skip
