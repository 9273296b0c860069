"""Holds that outlive their saga: a hold belongs to one saga leg and ends when the saga ends
(posted on completion, voided when compensated), so an open hold of a finished saga, or of
no saga at all, is a break.

The account pass saw the hold open on its snapshot; the saga's log is read after it, and a
hold still open in the account's stream after that is reported. Holds end before their
saga records its end, so this order reports no hold that was merely ending meanwhile.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from eventstore import EventStore
from ledger.auditing.account_fold import SERVICE, OpenHold
from ledger.auditing.findings import Finding
from saga.contracts import stream_of as saga_stream_of

FINAL_SAGA_EVENTS: Final = {
    "SagaCompleted": "completed", "SagaRejected": "rejected", "SagaFailed": "failed"
}
"""The events that end a saga, and the status each leaves it in."""
_ENDING_EVENTS: Final = ["HoldPosted", "HoldVoided"]


async def audit_open_holds(
    accounts: EventStore, sagas: EventStore, open_holds: Sequence[OpenHold]
) -> list[Finding]:
    """The holds in `open_holds` whose saga has ended (or never existed) and that are open."""
    if not open_holds:
        return []
    ends = await _saga_ends(sagas, {hold.transfer_id for hold in open_holds})
    suspects = [hold for hold in open_holds if ends.get(hold.transfer_id) != "running"]
    if not suspects:
        return []
    ended = await _ended_since(accounts, suspects)
    findings = []
    for hold in suspects:
        if (hold.stream_id, hold.hold_id) in ended:
            continue
        end = ends.get(hold.transfer_id)
        reason = (
            f"hold {hold.hold_id} is open but saga {hold.transfer_id} does not exist"
            if end is None
            else f"hold {hold.hold_id} is still open but its saga ended ({end})"
        )
        findings.append(Finding(SERVICE, hold.stream_id, hold.stream_version, "holds", reason))
    return findings


async def _saga_ends(sagas: EventStore, saga_ids: set[str]) -> dict[str, str]:
    """Saga id -> its final event type, or "running" for a saga that has not ended."""
    streams = [saga_stream_of(saga_id) for saga_id in sorted(saga_ids)]
    rows = await sagas.pool.fetch(
        f"select s.stream_id, (select e.event_type from {sagas.schema}.events as e"
        "   where e.stream_id = s.stream_id and e.event_type = any($2::text[]) limit 1) as ended"
        f" from {sagas.schema}.streams as s where s.stream_id = any($1::text[])",
        streams, list(FINAL_SAGA_EVENTS),
    )  # fmt: skip
    prefix_length = len(saga_stream_of(""))
    return {
        row["stream_id"][prefix_length:]: FINAL_SAGA_EVENTS.get(row["ended"], "running")
        for row in rows
    }


async def _ended_since(accounts: EventStore, holds: Sequence[OpenHold]) -> set[tuple[str, str]]:
    """(stream, hold id) of the holds among `holds` that have ended by now."""
    rows = await accounts.pool.fetch(
        f"select stream_id, data->>'hold_id' as hold_id from {accounts.schema}.events"
        " where stream_id = any($1::text[]) and event_type = any($2::text[])"
        " and data->>'hold_id' = any($3::text[])",
        sorted({hold.stream_id for hold in holds}), _ENDING_EVENTS,
        sorted({hold.hold_id for hold in holds}),
    )  # fmt: skip
    return {(row["stream_id"], row["hold_id"]) for row in rows}
