"""Risk events to and from the event store."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from eventstore import NewEvent, RecordedEvent
from ledger import context
from risk_service.contracts import EVENT_TYPES, RiskEvent

CATEGORY = "risk"


def stream_of(account_id: str) -> str:
    """`risk-<account id>`: the stream of one account's limits, exposures and decisions."""
    return f"{CATEGORY}-{account_id}"


def account_id_of(stream_id: str) -> str:
    """The account id of a `risk-<id>` stream."""
    assert stream_id.startswith(f"{CATEGORY}-"), f"{stream_id} is not a risk stream"
    return stream_id.removeprefix(f"{CATEGORY}-")


def to_new_event(event: RiskEvent) -> NewEvent:
    """An event to append, with the current request context as its metadata."""
    return NewEvent(
        event.event_type, event.model_dump(mode="json"), context.current().as_metadata()
    )


def from_recorded(recorded: RecordedEvent) -> RiskEvent:
    """The typed risk event of a stored one."""
    return decode(recorded.event_type, recorded.data)


def decode(event_type: str, data: Mapping[str, Any]) -> RiskEvent:
    """The typed risk event of a type name and its data."""
    return EVENT_TYPES[event_type].model_validate(data)
