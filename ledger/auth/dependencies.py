"""FastAPI dependencies: the request's principal, and the scope check every route runs."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ledger.auth.middleware import PRINCIPAL_STATE
from ledger.auth.policy import authorize, is_public, rule_for
from ledger.auth.scopes import Principal


def principal_of(request: Request) -> Principal:
    """The principal the access middleware verified for this request."""
    principal = getattr(request.state, PRINCIPAL_STATE, None)
    assert isinstance(principal, Principal), "AccessMiddleware runs before every route"
    return principal


async def _current_principal(request: Request) -> Principal:
    # async: FastAPI would run a plain `def` dependency in a worker thread, per request.
    return principal_of(request)


CurrentPrincipal = Annotated[Principal, Depends(_current_principal)]


async def authorize_route(request: Request) -> None:
    """Refuse (403) a token without the scopes the route's rule in `policy.ROUTES` needs.

    Installed on the whole app, so no route can forget it; public paths pass.
    """
    if is_public(request.url.path):
        return
    route_path = str(getattr(request.scope.get("route"), "path", ""))
    authorize(principal_of(request), rule_for(request.method, route_path))
