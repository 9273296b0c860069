"""Helpers for writers that handle many streams in one transaction: their locks, in one
statement, and rows handed to `unnest` as one array per column."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from eventstore._db import Executor


async def lock_streams(executor: Executor, schema: str, stream_ids: Iterable[str]) -> None:
    """Queue for the streams (in id order) on the event store's per-stream lock, which
    takes no transaction id: taken before any row lock, the transaction's id comes after the
    streams' last writers', so its appends are never refused as out of commit order
    (docs/append-order.md). Held until the transaction ends; taking it again is free.

    One statement for all of them: the function scan of `unnest` yields (and so locks) the
    streams in the array's order, which is sorted here, so two writers never deadlock."""
    await executor.execute(
        "select count(pg_advisory_xact_lock(hashtext($1), hashtext(stream)))"
        " from unnest($2::text[]) as stream",
        schema, sorted(set(stream_ids)),
    )  # fmt: skip


def unnest_columns(rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """Rows turned into one list per column: the arrays `unnest` turns back into rows."""
    return [list(column) for column in zip(*rows, strict=True)]


def unnest_placeholders(types: str) -> str:
    """`$1::t1, $2::t2, ...` for a comma-separated list of array types: the arguments of an
    `unnest` over the lists `unnest_columns` gives, in column order."""
    return ", ".join(f"${i}::{t.strip()}" for i, t in enumerate(types.split(","), start=1))
