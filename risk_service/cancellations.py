"""Exposures released before they were assessed: the `risk_cancelled_exposures` read model.

A saga that gives up on an assessment (its attempts went unanswered, or its deadline
passed) releases the exposure all the same, because the assessment may have been applied.
When the release finds nothing open, the risk service records `ExposureCancelled`, and this
inline table keeps the exposure's id, so that the assessment, should it still arrive (it
waited in a queue behind a slow batch), is refused instead of reserving exposure that
nobody would ever release. The account service does the same for holds (`HoldCancelled`
in its `holds` table). The rows are written only on that rare path; the state of an
account keeps only its open exposures, so it stays bounded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from eventstore import Projection, RecordedEvent, unnest_columns
from eventstore._db import Connection, Executor
from risk_service.contracts import ExposureCancelled
from risk_service.domain import exposure_id
from risk_service.events import CATEGORY, account_id_of, from_recorded

TABLE = "risk_cancelled_exposures"


class CancelledExposuresProjection(Projection):
    """One row per exposure id cancelled by a release that found nothing open."""

    name = TABLE
    table = TABLE
    key_columns = ("exposure_id",)

    def create_sql(self, table: str) -> str:
        """The cancellations table."""
        return f"""
            create table {table} (
                exposure_id text primary key,
                account_id text not null,
                cancelled_at timestamptz not null
            )
        """

    async def apply(self, connection: Connection, table: str, event: RecordedEvent) -> None:
        """Keep the exposure id of an ExposureCancelled."""
        await self.apply_batch(connection, table, [event])

    async def apply_batch(
        self, connection: Connection, table: str, events: Sequence[RecordedEvent]
    ) -> None:
        """Keep the exposure ids a page cancels, in one insert (none: no statement). No
        "on conflict": an exposure is cancelled once, and the primary key says so loudly."""
        rows = [
            (exposure_id(cancelled.transfer_id, cancelled.leg_id),
             account_id_of(event.stream_id), cancelled.cancelled_at)
            for event in events
            if event.category == CATEGORY and event.event_type == ExposureCancelled.event_type
            and isinstance(cancelled := from_recorded(event), ExposureCancelled)
        ]  # fmt: skip
        if rows:
            await connection.execute(
                f"insert into {table} (exposure_id, account_id, cancelled_at)"
                " select * from unnest($1::text[], $2::text[], $3::timestamptz[])",
                *unnest_columns(rows),
            )


async def cancelled_among(executor: Executor, schema: str, ids: Iterable[str]) -> set[str]:
    """Which of the exposure `ids` were cancelled."""
    rows = await executor.fetch(
        f"select exposure_id from {schema}.{TABLE} where exposure_id = any($1::text[])",
        list(ids),
    )
    return {row["exposure_id"] for row in rows}
