"""What `ledger prune` asks of the saga log: the commands whose replies a saga that is not
final may still need (docs/retention.md)."""

from __future__ import annotations

import uuid
from typing import Final

from eventstore._db import Executor
from saga.contracts import CATEGORY, FINAL_STATUSES, SagaStatus
from saga.runs import RUNS_TABLE

_UNFINISHED: Final = [status.value for status in SagaStatus if status not in FINAL_STATUSES]


async def unfinished_command_ids(executor: Executor, schema: str) -> set[uuid.UUID]:
    """The id of every command that a saga not final (running, compensating, or parked for
    an operator's retry) has recorded as sent; empty before the saga log has a runs table.

    Only such a saga sends commands, and one it sends again (a resend of its step in flight)
    is recorded in its log already. A command not recorded when this is read is sent later,
    so its reply is younger than anything a prune of that moment deletes.
    """
    table = f"{schema}.{RUNS_TABLE}"
    if await executor.fetchval("select to_regclass($1)", table) is None:
        return set()
    rows = await executor.fetch(
        f"select distinct (e.data ->> 'command_id')::uuid from {table} r"
        f" join {schema}.events e on e.stream_id = $2 || r.saga_id"
        " where r.status = any($1::text[]) and e.event_type = 'StepStarted'",
        _UNFINISHED, f"{CATEGORY}-",
    )  # fmt: skip
    return {row[0] for row in rows}
