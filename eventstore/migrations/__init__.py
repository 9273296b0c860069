"""Versioned, idempotent schema migrations, recorded in `<schema>.schema_migrations`.

Each `NNNN_name.sql` file beside this module runs once per schema, in its own transaction,
under an advisory lock so that several processes starting at once migrate one at a time.
A file changed after it ran is refused (its checksum is recorded), never silently re-run.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import Final

from eventstore._db import Connection
from eventstore.errors import MigrationError

_SCHEMA_NAME: Final = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_FILE_NAME: Final = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_MIN_SERVER_MAJOR: Final = 14


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file: its version, name, SQL and checksum."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """sha256 of the file's text, recorded when it runs."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


def check_schema_name(schema: str) -> str:
    """Return `schema` if it is a safe lower-case identifier, else raise MigrationError."""
    if not _SCHEMA_NAME.match(schema):
        raise MigrationError(f"schema name {schema!r} must match {_SCHEMA_NAME.pattern}")
    return schema


def load_migrations() -> list[Migration]:
    """The migrations shipped with the event store, in version order."""
    found = []
    for entry in resources.files(__package__).iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda migration: migration.version)
    assert [m.version for m in found] == list(range(1, len(found) + 1)), "migrations have a gap"
    return found


async def migrate(connection: Connection, schema: str) -> list[Migration]:
    """Bring `schema` up to the newest migration; return the migrations that ran now."""
    check_schema_name(schema)
    # extract(epoch ...) is exact (numeric) from PostgreSQL 14 on; the hash chain relies on it.
    if connection.get_server_version().major < _MIN_SERVER_MAJOR:
        raise MigrationError(f"PostgreSQL {_MIN_SERVER_MAJOR} or newer is required")
    ran = []
    for migration in load_migrations():
        async with connection.transaction():
            await connection.execute("select pg_advisory_xact_lock(hashtext($1))", schema)
            await connection.execute(f"create schema if not exists {schema}")
            await connection.execute(
                f"create table if not exists {schema}.schema_migrations ("
                " version int primary key, name text not null, checksum text not null,"
                " applied_at timestamptz not null default now())"
            )
            recorded = await connection.fetchval(
                f"select checksum from {schema}.schema_migrations where version = $1",
                migration.version,
            )
            if recorded is not None:
                if recorded != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name} changed after it "
                        f"ran on schema {schema!r}; write a new migration instead"
                    )
                continue
            await connection.execute(migration.sql.replace("{schema}", schema))
            await connection.execute(
                f"insert into {schema}.schema_migrations (version, name, checksum)"
                " values ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )
            ran.append(migration)
    return ran


async def applied_migrations(connection: Connection, schema: str) -> list[int]:
    """The versions recorded as applied on `schema` (empty when it was never migrated)."""
    check_schema_name(schema)
    exists = await connection.fetchval("select to_regclass($1)", f"{schema}.schema_migrations")
    if exists is None:
        return []
    rows = await connection.fetch(f"select version from {schema}.schema_migrations order by 1")
    return [row["version"] for row in rows]
