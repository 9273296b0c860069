"""Trade service events to and from the event store: streams `transfer-<id>`, `trade-<id>`."""

from __future__ import annotations

from ledger.codec import EventCodec
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


# Two categories share one codec for encoding and decoding; stream ids are made above.
_CODEC: EventCodec[TradeEvent] = EventCodec(SettlementKind.TRANSFER.value, EVENT_TYPES)
to_new_event = _CODEC.to_new_event
decode = _CODEC.decode
from_recorded = _CODEC.from_recorded
