"""Risk events to and from the event store."""

from __future__ import annotations

from ledger.codec import EventCodec
from risk_service.contracts import EVENT_TYPES, RiskEvent

CODEC: EventCodec[RiskEvent] = EventCodec("risk", EVENT_TYPES)
CATEGORY = CODEC.category

stream_of = CODEC.stream_of
account_id_of = CODEC.id_of
to_new_event = CODEC.to_new_event
decode = CODEC.decode
from_recorded = CODEC.from_recorded
