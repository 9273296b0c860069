"""Access control on an app: the gate middleware, the scope check, and their documentation."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ledger.auth.keys import KeyConfigError
from ledger.auth.middleware import REALM, AccessMiddleware, Gate
from ledger.auth.openapi import document_security
from ledger.auth.policy import ScopeRefused
from ledger.auth.ratelimit import RateLimiter
from ledger.auth.tokens import TokenVerifier, VerifiedTokens
from ledger.problems import problem_response
from ledger.settings import Settings

_log = logging.getLogger(__name__)
AUTH_OFF_WARNING = (
    "LEDGER_AUTH=off: every request is served without a token check, as admin."
    " For local experiments only."
)


def verifier_of(settings: Settings) -> TokenVerifier | None:
    """The token verifier `settings` ask for (None: `auth=off`). Raises KeyConfigError (a
    ValueError) for `auth=off` in production, or no usable key while auth is on."""
    if settings.auth == "off":
        if settings.environment == "production":
            raise KeyConfigError("LEDGER_AUTH=off is refused when LEDGER_ENVIRONMENT=production")
        return None
    return TokenVerifier.from_settings(settings)


def gate_of(settings: Settings) -> Gate:
    """The checks `settings` ask for, warning when they check no token; KeyConfigError as
    `verifier_of`."""
    verifier = verifier_of(settings)
    if verifier is None:
        _log.warning(AUTH_OFF_WARNING)
    limiter = None
    if settings.rate_limit_per_s > 0:
        limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
    remembered = VerifiedTokens(verifier) if verifier is not None else None
    return Gate(remembered, limiter, settings.max_body_bytes)


def install_access_control(app: FastAPI, settings: Settings) -> None:
    """Put the gate in front of `app`'s routes and declare bearer tokens in its OpenAPI.

    The app must also be built with `dependencies=[Depends(authorize_route)]`, which checks
    each route's scopes. Add this before the middleware that binds the request context, so
    that one stays outermost. Raises KeyConfigError as `gate_of`.
    """
    app.add_middleware(AccessMiddleware, gate=gate_of(settings))
    app.add_exception_handler(ScopeRefused, _on_scope_refused)  # type: ignore[arg-type]
    document_security(app)


async def _on_scope_refused(request: Request, error: ScopeRefused) -> JSONResponse:
    response = problem_response(error.status, error.detail, error.code, request.url.path,
                                **error.extensions)  # fmt: skip
    scope = " ".join(error.needed)
    response.headers["WWW-Authenticate"] = f'{REALM}, error="insufficient_scope", scope="{scope}"'
    return response
