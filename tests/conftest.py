"""Servers for the whole test session: the ones named by the environment, else embedded ones.

``LEDGER_TEST_DATABASE_URL`` and ``LEDGER_TEST_NATS_URL`` name existing servers; without
them an embedded PostgreSQL and an embedded nats-server are started under the session's
temporary directory the first time a test asks for them, and stopped at the end.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

from ledger.embedded import EmbeddedNats, EmbeddedPostgres

pytest_plugins = ["tests.watchdog"]


@pytest.fixture(scope="session", autouse=True)
def auth_secret() -> Iterator[str]:
    """An HS256 secret for the session's apps (LEDGER_AUTH_JWT_SECRET, unless one is set), so
    tests call the API with tokens, as clients must (tests/integration/authorized.py)."""
    with pytest.MonkeyPatch.context() as patch:
        secret = os.environ.get("LEDGER_AUTH_JWT_SECRET") or secrets.token_urlsafe(32)
        patch.setenv("LEDGER_AUTH_JWT_SECRET", secret)
        yield secret


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL DSN for the session; the database is shared by every test."""
    given_url = os.environ.get("LEDGER_TEST_DATABASE_URL")
    if given_url:
        yield given_url
        return
    with EmbeddedPostgres(tmp_path_factory.mktemp("postgres")) as server:
        yield server.dsn


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A NATS URL (JetStream enabled) for the session; the server is shared by every test."""
    given_url = os.environ.get("LEDGER_TEST_NATS_URL")
    if given_url:
        yield given_url
        return
    with EmbeddedNats(tmp_path_factory.mktemp("nats")) as server:
        yield server.url
