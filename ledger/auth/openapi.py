"""The OpenAPI document tells the truth about tokens: which operations need one, and the
problem answers the gate may give (401, 403, 413, 429) besides each route's own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from fastapi import FastAPI

from ledger.auth.policy import is_public, rule_for
from ledger.problems import problem_responses

SCHEME: Final = "bearerAuth"
_GATE_STATUSES: Final = (401, 403, 413, 429)
_METHODS: Final = frozenset({"get", "put", "post", "delete", "patch"})


def document_security(app: FastAPI) -> None:
    """Make `app.openapi()` declare bearer tokens on every protected operation."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _secure(generate())
        assert app.openapi_schema is not None, "FastAPI keeps what it generated"
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _secure(schema: dict[str, Any]) -> None:
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})[SCHEME] = {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
        "description": "A JWT from `ledger token create` (or your identity provider).",
    }  # fmt: skip
    for path, operations in schema.get("paths", {}).items():
        if is_public(path):
            continue
        for method, operation in operations.items():
            if method not in _METHODS:
                continue
            operation["security"] = [{SCHEME: []}]
            needed = sorted(scope.value for scope in rule_for(method, path).any_of)
            operation.setdefault("description", "")
            operation["description"] += f"\n\nNeeds a token with scope {' or '.join(needed)}."
            responses = operation.setdefault("responses", {})
            for status, response in problem_responses(*_GATE_STATUSES).items():
                responses.setdefault(str(status), response)
