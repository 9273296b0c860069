"""The story of one transfer or trade across every service, in time order: the trade
service's request and outcome, the saga's steps, and the account and risk events of its
legs.

The trade and saga streams are the transfer's own (`transfer-<id>` or `trade-<id>`,
`saga-<id>`: the saga id is the transfer id). Their legs name the accounts; in those
accounts' account and risk streams the story takes the events that carry the transfer id,
and the events without one that share a correlation id with the transfer's own events.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from eventstore import EventStore, RecordedEvent, StreamNotFound
from eventstore.reads import COLUMNS, decode
from ledger.auditing.stores import AuditStores

PAGE_EVENTS: Final = 1_000
SERVICE_ORDER: Final = ("trade", "saga", "risk", "account")
"""Events recorded at the same instant are told in this order: request, step, effect."""
_OWN_STREAMS: Final = (("trade", "transfer-{}"), ("trade", "trade-{}"), ("saga", "saga-{}"))
_LEG_CATEGORIES: Final = (("risk", "risk"), ("account", "account"))
_DETAIL_KEYS: Final = (
    "step", "attempt", "is_compensation", "side", "amount_minor", "quantity_minor", "price",
    "currency", "instrument", "leg_id", "reason", "code", "detail", "error", "by",
)  # fmt: skip
_MAX_VALUE_CHARS: Final = 60


@dataclass(frozen=True, slots=True)
class StoryLine:
    """One event of the story."""

    recorded_at: datetime
    service: str
    stream_id: str
    stream_version: int
    event_id: str
    event_type: str
    detail: str
    correlation_id: str | None
    actor: str | None
    data: dict[str, Any]


async def transfer_story(stores: AuditStores, transfer_id: str) -> list[StoryLine]:
    """Every event of the transfer found in the services' stores, in time order (empty
    when no service knows it)."""
    found: list[tuple[str, RecordedEvent]] = []
    for service, pattern in _OWN_STREAMS:
        store = stores.get(service)
        if store is not None:
            events = await _whole_stream(store, pattern.format(transfer_id))
            found.extend((service, event) for event in events)
    correlations = sorted({c for _, e in found if (c := _text(e.metadata.get("correlation_id")))})
    accounts = sorted(_leg_accounts(event for _, event in found))
    for service, category in _LEG_CATEGORIES:
        store = stores.get(service)
        if store is not None and accounts:
            streams = [f"{category}-{account_id}" for account_id in accounts]
            events = await _related_events(store, streams, transfer_id, correlations)
            found.extend((service, event) for event in events)
    found.sort(key=lambda item: (item[1].recorded_at, SERVICE_ORDER.index(item[0]),
                                 item[1].global_position))  # fmt: skip
    return [_line(service, event) for service, event in found]


def describe(data: dict[str, Any]) -> str:
    """A short account of an event's data: its telling fields, and its legs."""
    parts = []
    for key in _DETAIL_KEYS:
        value = data.get(key)
        if value is None or value is False:
            continue
        shown = "yes" if value is True else str(value)
        if len(shown) > _MAX_VALUE_CHARS:
            shown = shown[: _MAX_VALUE_CHARS - 1] + "…"
        parts.append(f"{key}={shown}")
    for leg in data.get("legs") or ():
        if isinstance(leg, dict):
            parts.append(
                f"leg {leg.get('leg_id')}: {leg.get('from_account')} -> {leg.get('to_account')}"
                f" {leg.get('amount_minor')} {leg.get('currency')}"
            )
    return ", ".join(parts)


async def _whole_stream(store: EventStore, stream_id: str) -> list[RecordedEvent]:
    events: list[RecordedEvent] = []
    while True:
        try:
            page = await store.read_stream(stream_id, from_version=len(events) + 1,
                                           limit=PAGE_EVENTS)  # fmt: skip
        except StreamNotFound:
            return events
        events.extend(page)
        if len(page) < PAGE_EVENTS:
            return events


def _leg_accounts(events: Iterable[RecordedEvent]) -> set[str]:
    accounts: set[str] = set()
    for event in events:
        for leg in event.data.get("legs") or ():
            if isinstance(leg, dict):
                accounts.update(str(leg[side]) for side in ("from_account", "to_account")
                                if leg.get(side))  # fmt: skip
    return accounts


async def _related_events(
    store: EventStore, streams: list[str], transfer_id: str, correlations: list[str]
) -> list[RecordedEvent]:
    rows = await store.pool.fetch(
        f"select {COLUMNS} from {store.schema}.events where stream_id = any($1::text[])"
        " and (data->>'transfer_id' = $2 or (not data ? 'transfer_id'"
        "      and metadata->>'correlation_id' = any($3::text[])))"
        " order by stream_id, stream_version",
        streams, transfer_id, correlations,
    )  # fmt: skip
    return [decode(row) for row in rows]


def _line(service: str, event: RecordedEvent) -> StoryLine:
    return StoryLine(
        recorded_at=event.recorded_at, service=service, stream_id=event.stream_id,
        stream_version=event.stream_version, event_id=str(event.event_id),
        event_type=event.event_type, detail=describe(event.data),
        correlation_id=_text(event.metadata.get("correlation_id")),
        actor=_text(event.metadata.get("actor")), data=event.data,
    )  # fmt: skip


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
