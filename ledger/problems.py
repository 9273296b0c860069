"""Problem details (RFC 9457): every HTTP error is `application/problem+json`, never a trace."""

from __future__ import annotations

import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from eventstore import (
    ConcurrencyError,
    DuplicateEventError,
    InvalidEvent,
    StoreUnavailable,
    StreamNotFound,
)

PROBLEM_MEDIA_TYPE: Final = "application/problem+json"
PROBLEM_SCHEMA: Final = "Problem"
"""The name of the problem body's schema in the OpenAPI components."""
_log = logging.getLogger(__name__)
_METHODS: Final = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
_DESCRIPTIONS: Final = {
    400: "The request body could not be read as JSON.",
    401: "No valid bearer token: missing, malformed, expired or forged.",
    403: "The token is valid but may not do this.",
    404: "No such resource (or none this token may see).",
    409: "Refused in the resource's current state, or lost to concurrent writers.",
    413: "The request body is larger than the ledger accepts.",
    422: "The request is not valid: `errors` names each field and what is wrong with it.",
    429: "Too many requests for this token; retry after `Retry-After` seconds.",
    503: "A server the ledger needs (PostgreSQL, NATS) is not answering.",
}


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


class FieldError(BaseModel):
    """One reason a request is not valid: where (`["body", "amount"]`) and what."""

    location: list[str | int]
    message: str


class ProblemDetails(BaseModel):
    """The body of every error answer, as the OpenAPI documents it. Problems may carry
    more members (`needed`, `available`, `stream_id`...), so others are allowed."""

    model_config = ConfigDict(extra="allow", title=PROBLEM_SCHEMA)
    type: str = Field(description="A URI naming the kind of problem.")
    title: str = Field(description="The HTTP status phrase.")
    status: int = Field(ge=400, le=599)
    detail: str = Field(description="What went wrong, for a person.")
    instance: str = Field(description="The path of the request.")
    code: str = Field(description="The kind of problem, stable, for a program.")
    errors: list[FieldError] | None = Field(
        default=None, description="With `validation_failed`: every field that is not valid."
    )


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` metadata for a route or router: each status answers problem+json."""
    return {
        status: {
            "description": _DESCRIPTIONS.get(status, HTTPStatus(status).phrase),
            "content": {
                PROBLEM_MEDIA_TYPE: {"schema": {"$ref": f"#/components/schemas/{PROBLEM_SCHEMA}"}}
            },
        }
        for status in statuses
    }


def document_problems(app: FastAPI) -> None:
    """Put the problem body's schema in `app`'s OpenAPI, where `problem_responses` refer."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()  # cached by FastAPI in app.openapi_schema: edit it in place
        schema = ProblemDetails.model_json_schema(ref_template="#/components/schemas/{model}")
        components = document.setdefault("components", {}).setdefault("schemas", {})
        components.update(schema.pop("$defs", {}))
        components[PROBLEM_SCHEMA] = schema
        for path in document.get("paths", {}).values():
            for operation in path.values():
                if "requestBody" in operation:  # FastAPI answers 400 to a body not UTF-8
                    _add_responses(operation, 400)
        return document

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


def _add_responses(operation: dict[str, Any], *statuses: int) -> None:
    responses = operation.setdefault("responses", {})
    for status, response in problem_responses(*statuses).items():
        responses.setdefault(str(status), response)


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
        response = problem_response(error.status_code, str(error.detail), code, request.url.path)
        response.headers.update(error.headers or {})
        allowed = _allowed_methods(request) if error.status_code == 405 else ""
        if allowed:
            response.headers["Allow"] = allowed
        return response

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


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at the request's path: Starlette's 405 names only
    those of the first route that matched the path (`/v1/accounts` has a GET and a POST)."""
    routes = request.app.router.routes
    allowed = [
        method for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL
               for route in routes)
    ]  # fmt: skip
    return ", ".join(allowed)


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
