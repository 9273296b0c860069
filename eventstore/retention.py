"""Pruning tracking rows once nothing can ask for them again (docs/retention.md).

Each table is pruned by the age of its rows, in batches that are each a transaction of their
own, so that no writer waits on a long delete and an interrupted prune has kept what it did.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime
from enum import Enum
from typing import Final

import asyncpg

from eventstore._db import Connection
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
    if keep:
        # An indexed table, not an array in the statement: ids past what work_mem hashes
        # (some 250,000) were compared with each row one by one.
        condition += (f" and not exists (select from {_KEPT} k"
                      f" where k.command_id = {table}.command_id)")  # fmt: skip
    with translated_errors():
        async with pool.acquire() as connection:
            if keep:
                await _hold_kept(connection, keep)
            try:
                return await _prune_on(connection, table, condition, before, dry_run=dry_run)
            finally:
                if keep:
                    await connection.execute(f"drop table if exists {_KEPT}")


_KEPT: Final = "pg_temp.pruning_kept"
"""The ids kept from a prune, in a table of the prune's session."""


async def _hold_kept(connection: Connection, keep: Collection[uuid.UUID]) -> None:
    await connection.execute(f"drop table if exists {_KEPT}")
    await connection.execute(f"create table {_KEPT} (command_id uuid primary key)")
    await connection.execute(
        f"insert into {_KEPT} select distinct id from unnest($1::uuid[]) as id"
        " where id is not null", list(keep),
    )
    await connection.execute(f"analyze {_KEPT}")


async def _prune_on(
    connection: Connection, table: str, condition: str, before: datetime,
    *, dry_run: bool,
) -> int:
    """`prune` on one connection: the rows of `table` that meet `condition`."""
    if dry_run:
        count: int = await connection.fetchval(
            f"select count(*) from {table} where {condition}", before
        )
        return count
    deleted = 0
    while True:
        status = await connection.execute(
            f"delete from {table} where ctid = any(array(select ctid from {table}"
            f" where {condition} limit $2))",
            before, PRUNE_BATCH_ROWS,
        )  # fmt: skip
        batch = int(status.split()[-1])
        deleted += batch
        if batch < PRUNE_BATCH_ROWS:
            return deleted
