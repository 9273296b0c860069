"""Account events to and from the event store."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from account_service.contracts import EVENT_TYPES, AccountEvent
from eventstore import NewEvent, RecordedEvent
from ledger import context

CATEGORY = "account"


def stream_of(account_id: str) -> str:
    """`account-<id>`: the stream that holds one account's events."""
    return f"{CATEGORY}-{account_id}"


def account_id_of(stream_id: str) -> str:
    """The account id of an `account-<id>` stream."""
    assert stream_id.startswith(f"{CATEGORY}-"), f"{stream_id} is not an account stream"
    return stream_id.removeprefix(f"{CATEGORY}-")


def to_new_event(event: AccountEvent) -> NewEvent:
    """An event to append, with the current request context as its metadata."""
    return NewEvent(
        event.event_type, event.model_dump(mode="json"), context.current().as_metadata()
    )


def from_recorded(recorded: RecordedEvent) -> AccountEvent:
    """The typed account event of a stored one."""
    return decode(recorded.event_type, recorded.data)


def decode(event_type: str, data: Mapping[str, Any]) -> AccountEvent:
    """The typed account event of a type name and its data."""
    return EVENT_TYPES[event_type].model_validate(data)
