"""The services' event stores as an audit sees them: read-only, never migrated (an audit
changes nothing, and a schema that is missing is reported, not created)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from eventstore import EventStore


@dataclass(slots=True)
class AuditStores:
    """The event stores of the services asked for that exist, by service name, and the
    services whose schema holds no event store."""

    stores: dict[str, EventStore] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    """Service name -> the schema that was looked for."""

    def get(self, service: str) -> EventStore | None:
        """The store of `service`, if it exists."""
        return self.stores.get(service)


async def find_stores(schemas: Iterable[tuple[str, asyncpg.Pool[Any], str]]) -> AuditStores:
    """The stores of (service, pool, schema) triples whose schema has an events table; the
    pools stay the caller's."""
    found = AuditStores()
    for service, pool, schema in schemas:
        if await pool.fetchval("select to_regclass($1)", f"{schema}.events") is None:
            found.missing[service] = schema
        else:
            found.stores[service] = EventStore(pool, schema)
    return found
