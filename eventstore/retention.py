"""Pruning tracking rows once nothing can ask for them again (docs/retention.md).

Each table is pruned by the age of its rows, in batches that are each a transaction of their
own, so that no writer waits on a long delete and an interrupted prune has kept what it did.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime
from enum import Enum
from typing import Any, Final

import asyncpg

from eventstore._translate import translated_errors

PRUNE_BATCH_ROWS: Final = 10_000
"""Rows deleted per transaction."""


class TrackingTable(Enum):
    """A tracking table and the column that dates its rows."""

    INBOX = ("inbox", "handled_at")
    COMMAND_REPLIES = ("command_replies", "recorded_at")
    IDEMPOTENCY_KEYS = ("idempotency_keys", "recorded_at")

    @property
    def table(self) -> str:
        """The table's name in a store's schema."""
        return self.value[0]

    @property
    def dated_by(self) -> str:
        """The column of each row's time."""
        return self.value[1]


async def prune(
    pool: asyncpg.Pool, schema: str, tracking: TrackingTable, before: datetime,
    *, keep: Collection[uuid.UUID] = (), dry_run: bool = False,
) -> int:
    """Delete the rows of `tracking` in `schema` dated before `before`, except the command
    replies whose command ids are in `keep`; how many. With `dry_run`, count them and delete
    nothing."""
    assert not keep or tracking is TrackingTable.COMMAND_REPLIES, "only replies are kept by id"
    table, condition = f"{schema}.{tracking.table}", f"{tracking.dated_by} < $1"
    arguments: list[Any] = [before]
    if keep:
        # A hashed subplan: one probe per row, however many ids are kept.
        condition += " and command_id not in (select unnest($2::uuid[]))"
        arguments.append(list(keep))
    with translated_errors():
        if dry_run:
            count: int = await pool.fetchval(
                f"select count(*) from {table} where {condition}", *arguments
            )
            return count
        deleted = 0
        while True:
            status = await pool.execute(
                f"delete from {table} where ctid = any(array(select ctid from {table}"
                f" where {condition} limit ${len(arguments) + 1}))",
                *arguments, PRUNE_BATCH_ROWS,
            )  # fmt: skip
            batch = int(status.split()[-1])
            deleted += batch
            if batch < PRUNE_BATCH_ROWS:
                return deleted
