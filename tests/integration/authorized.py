"""HTTP clients of a test app that carry a bearer token, as every client of the ledger must.

The session's apps check tokens against the secret `tests/conftest.py` puts in
LEDGER_AUTH_JWT_SECRET; these helpers sign with the app's own settings.
"""

from __future__ import annotations

from collections.abc import Iterable

import httpx
from fastapi import FastAPI

from ledger.auth import Scope, TokenSigner
from ledger.settings import Settings

TEST_SUBJECT = "test-admin"


def token_for(
    settings: Settings, scopes: Iterable[Scope] = (Scope.ADMIN,), *,
    subject: str = TEST_SUBJECT, owner: str | None = None, ttl_s: int = 3600,
) -> str:
    """A token the ledger configured by `settings` accepts."""
    return TokenSigner.from_settings(settings).issue(subject, scopes, ttl_s=ttl_s, owner=owner)


def bearer(
    settings: Settings, scopes: Iterable[Scope] = (Scope.ADMIN,), *,
    subject: str = TEST_SUBJECT, owner: str | None = None,
) -> dict[str, str]:
    """The Authorization header of `token_for(...)`."""
    return {"Authorization": f"Bearer {token_for(settings, scopes, subject=subject, owner=owner)}"}


def authorized_client(
    app: FastAPI, scopes: Iterable[Scope] = (Scope.ADMIN,), *, subject: str = TEST_SUBJECT,
    owner: str | None = None, base_url: str = "http://ledger",
) -> httpx.AsyncClient:
    """An in-process client of `app` (made by `ledger.http.create_app`) sending a token with
    `scopes` (admin by default) for `subject`, bound to `owner` when given."""
    settings: Settings = app.state.host.settings
    headers = bearer(settings, scopes, subject=subject, owner=owner)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url,
                             headers=headers)  # fmt: skip
