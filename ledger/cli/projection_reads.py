"""The services' projections as `ledger projections` sees them: which exist, where they stand,
and the store a rebuild runs on (with the service's inline projections, exactly as the
service appends, so the rebuild knows which ones move with the append)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from eventstore import EventStore, Projection
from ledger.cli.connections import ServiceDatabase
from ledger.cli.failures import OperatorError
from ledger.host import Service

Kind = Literal["inline", "async"]


@dataclass(frozen=True, slots=True)
class Target:
    """One projection of one service."""

    service: Service
    projection: Projection
    kind: Kind

    @property
    def name(self) -> str:
        """The projection's name, which `ledger projections rebuild` takes."""
        return self.projection.name


@dataclass(frozen=True, slots=True)
class ProjectionInfo:
    """A line of `ledger projections list`."""

    name: str
    service: str
    kind: Kind
    table: str
    position: int | None
    """The global position it reflects: the head of the log for an inline projection, the
    checkpoint for an async one; None when the schema was never migrated."""
    rows: int | None
    """None when the table does not exist yet."""

    def as_document(self) -> dict[str, Any]:
        """Plain JSON values, for `--json`."""
        return asdict(self)


def targets(services: list[Service]) -> list[Target]:
    """Every projection of these services, in service order.

    Every service projection today is inline (`Service.inline_projections`); the kind is
    kept because the event store rebuilds async ones too (to their checkpoint)."""
    return [
        Target(service, projection, "inline")
        for service in services
        for projection in service.inline_projections()
    ]


def store_for(database: ServiceDatabase, target: Target) -> EventStore:
    """The service's store with the target's very projection object inline (a rebuild tells
    inline from async by identity), beside the service's other inline projections."""
    inline = [
        target.projection if projection.name == target.name else projection
        for projection in database.service.inline_projections()
    ]
    return EventStore(database.pool, database.schema, inline_projections=inline)


async def projection_info(database: ServiceDatabase, target: Target) -> ProjectionInfo:
    """Where one projection stands and how many rows it holds."""
    table = f"{database.schema}.{target.projection.table}"
    pool = database.pool
    is_migrated = bool(await database.applied_migrations())
    rows = None
    if await pool.fetchval("select to_regclass($1)", table) is not None:
        rows = int(await pool.fetchval(f"select count(*) from {table}"))
    position = None
    if is_migrated and target.kind == "inline":
        position = int(await pool.fetchval(
            f"select coalesce(max(global_position), 0) from {database.schema}.events"
        ))  # fmt: skip
    elif is_migrated:
        position = int(await pool.fetchval(
            f"select coalesce(max(global_position), 0) from {database.schema}.checkpoints"
            " where name = $1", target.name,
        ))  # fmt: skip
    return ProjectionInfo(target.name, target.service.name, target.kind, table, position, rows)


async def check_rebuildable(database: ServiceDatabase, target: Target, verify: bool) -> None:
    """Refuse, with what to do, a rebuild on a schema never migrated, or a verify of a table
    that does not exist (there would be nothing to compare with)."""
    if not await database.applied_migrations():
        raise OperatorError(f"schema {database.schema!r} is not migrated; run: ledger migrate")
    table = f"{database.schema}.{target.projection.table}"
    if verify and await database.pool.fetchval("select to_regclass($1)", table) is None:
        raise OperatorError(f"{table} does not exist, so there is nothing to verify;"
                            f" rebuild it: ledger projections rebuild {target.name}")  # fmt: skip
