"""Trade service events to and from the event store: streams `transfer-<id>`, `trade-<id>`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from eventstore import NewEvent, RecordedEvent
from ledger import context
from trade_service.contracts import EVENT_TYPES, TradeEvent
from trade_service.domain import SettlementKind

CATEGORIES: tuple[str, ...] = tuple(kind.value for kind in SettlementKind)
"""`transfer` and `trade`: one stream category per kind of settlement."""


def stream_of(kind: SettlementKind, transfer_id: str) -> str:
    """`transfer-<id>` or `trade-<id>`: the stream that holds one settlement's events."""
    return f"{kind.value}-{transfer_id}"


def settlement_of(stream_id: str) -> tuple[SettlementKind, str] | None:
    """The kind and id of a settlement stream; None for any other stream."""
    category, _, transfer_id = stream_id.partition("-")
    if category not in CATEGORIES or not transfer_id:
        return None
    return SettlementKind(category), transfer_id


def to_new_event(event: TradeEvent) -> NewEvent:
    """An event to append, with the current request context as its metadata."""
    return NewEvent(
        event.event_type, event.model_dump(mode="json"), context.current().as_metadata()
    )


def from_recorded(recorded: RecordedEvent) -> TradeEvent:
    """The typed trade event of a stored one."""
    return decode(recorded.event_type, recorded.data)


def decode(event_type: str, data: Mapping[str, Any]) -> TradeEvent:
    """The typed trade event of a type name and its data."""
    return EVENT_TYPES[event_type].model_validate(data)
