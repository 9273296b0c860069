"""The gate every HTTP request passes before any route: token, rate limit, body size.

In order: a public path (health, metrics, docs) skips the token check; any other request
must carry a valid bearer token (401 otherwise, RFC 6750); the client's bucket is charged,
keyed by the token's subject or, without a valid token, by the client's address (429 with
`Retry-After` when empty); the body is read up to `max_body_bytes` (413 beyond). The route
then runs with the principal in `request.state.principal` and, as the actor of everything
it records, the token's subject bound in the request context.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ledger import context
from ledger.auth.policy import is_public
from ledger.auth.ratelimit import RateLimiter, retry_after_header
from ledger.auth.scopes import ANONYMOUS, Principal
from ledger.auth.tokens import TokenError, VerifiedTokens
from ledger.problems import problem_response

PRINCIPAL_STATE: Final = "principal"
REALM: Final = 'Bearer realm="ledger"'


class _BodyTooLarge(Exception):
    pass


class _ClientLeft(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Gate:
    """What the middleware checks with: None verifier means `LEDGER_AUTH=off`."""

    verifier: VerifiedTokens | None
    limiter: RateLimiter | None
    max_body_bytes: int


class AccessMiddleware:
    """ASGI middleware applying a `Gate` to every HTTP request."""

    def __init__(self, app: ASGIApp, gate: Gate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        principal: Principal | None = None
        if not is_public(scope["path"]):
            answered, principal = await self._authenticate(scope, receive, send)
            if answered:
                return
        try:
            body = await _read_body(scope, receive, self.gate.max_body_bytes)
        except _ClientLeft:
            # No one will read this answer; it is sent so that the request still has one.
            await _problem(scope, receive, send, 400, "the client left before sending its"
                           " whole body", "incomplete_body")  # fmt: skip
            return
        except _BodyTooLarge:
            limit = self.gate.max_body_bytes
            await _problem(scope, receive, send, 413, f"the request body exceeds {limit} bytes",
                           "content_too_large", max_body_bytes=limit)  # fmt: skip
            return
        replay = _replaying(body, receive)
        if principal is None:
            await self.app(scope, replay, send)
            return
        scope.setdefault("state", {})[PRINCIPAL_STATE] = principal
        actor = None if principal is ANONYMOUS else principal.subject
        with context.bound(replace(context.current(), actor=actor)):
            await self.app(scope, replay, send)

    async def _authenticate(
        self, scope: Scope, receive: Receive, send: Send
    ) -> tuple[bool, Principal | None]:
        """(True, None) when a 401 or 429 was answered, else (False, the principal)."""
        principal: Principal | None = ANONYMOUS
        failure: str | None = None
        if self.gate.verifier is not None:
            try:
                principal = self.gate.verifier.verify(_bearer_token(scope))
            except TokenError as error:
                principal, failure = None, str(error)
        client = f"sub:{principal.subject}" if principal and principal is not ANONYMOUS else (
            f"addr:{_client_address(scope)}"
        )
        wait_s = self.gate.limiter.take(client) if self.gate.limiter else 0.0
        if wait_s > 0:
            await _problem(scope, receive, send, 429, "too many requests: slow down and retry"
                           " after the number of seconds in Retry-After", "rate_limited",
                           headers={"Retry-After": retry_after_header(wait_s)})  # fmt: skip
            return True, None
        if failure is not None:
            await _problem(scope, receive, send, 401, failure, "unauthorized",
                           headers={"WWW-Authenticate": _challenge(failure)})  # fmt: skip
            return True, None
        return False, principal


def _bearer_token(scope: Scope) -> str:
    """The token of the `Authorization: Bearer` header; TokenError when there is none."""
    values: list[bytes] = [value for name, value in scope["headers"] if name == b"authorization"]
    if not values:
        raise TokenError(_MISSING)
    if len(values) > 1:
        raise TokenError("the request carries several Authorization headers")
    scheme, _, token = values[0].decode("latin-1").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise TokenError("the Authorization header must be `Bearer <token>`")
    return token


_MISSING: Final = "this request needs an Authorization: Bearer <token> header"


def _challenge(failure: str) -> str:
    """The `WWW-Authenticate` of a 401: without error code when no token came (RFC 6750
    3.1), else `invalid_token` and why."""
    if failure == _MISSING:
        return REALM
    # RFC 6750 3: the description is printable ASCII without `"` and `\\`; a token's own
    # text (its `alg`) may be quoted in it, so anything else is dropped, never sent.
    description = "".join(c for c in failure if " " <= c <= "~" and c not in '"\\')
    return f'{REALM}, error="invalid_token", error_description="{description}"'


def _client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


async def _read_body(scope: Scope, receive: Receive, max_bytes: int) -> bytes:
    """The whole request body; _BodyTooLarge as soon as it passes `max_bytes` (or its
    Content-Length says it will), _ClientLeft when the client went away first."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > max_bytes:
            raise _BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise _ClientLeft
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise _BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands over `body` first, then whatever the client sends next."""
    is_sent = False

    async def replay() -> Message:
        nonlocal is_sent
        if not is_sent:
            is_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _problem(
    scope: Scope, receive: Receive, send: Send, status: int, detail: str, code: str,
    headers: dict[str, str] | None = None, **extensions: object,
) -> None:
    response = problem_response(status, detail, code, scope["path"], **extensions)
    response.headers.update(headers or {})
    await response(scope, receive, send)

