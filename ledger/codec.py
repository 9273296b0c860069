"""Typed domain events to and from the event store, the same way in every service."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel

from eventstore import NewEvent, RecordedEvent
from ledger import context


class DomainEvent(BaseModel):
    """What a service's events share: a class-level type name, and pydantic's dump."""

    event_type: ClassVar[str]


EventT = TypeVar("EventT", bound=DomainEvent)


class EventCodec(Generic[EventT]):
    """Encodes a service's events for appending and decodes stored ones, by type name."""

    def __init__(self, category: str, event_types: Mapping[str, type[EventT]]) -> None:
        assert "-" not in category, "a category is the stream id's part before the first dash"
        self.category = category
        self.event_types = event_types

    def stream_of(self, entity_id: str) -> str:
        """`<category>-<id>`: the stream that holds one entity's events."""
        return f"{self.category}-{entity_id}"

    def id_of(self, stream_id: str) -> str:
        """The entity id of one of this category's streams."""
        assert stream_id.startswith(f"{self.category}-"), f"{stream_id} is not {self.category}"
        return stream_id.removeprefix(f"{self.category}-")

    def to_new_event(self, event: EventT) -> NewEvent:
        """An event to append, with the current request context as its metadata."""
        return NewEvent(
            event.event_type, event.model_dump(mode="json"), context.current().as_metadata()
        )

    def decode(self, event_type: str, data: Mapping[str, Any]) -> EventT:
        """The typed event of a type name and its data."""
        return self.event_types[event_type].model_validate(data)

    def from_recorded(self, recorded: RecordedEvent) -> EventT:
        """The typed event of a stored one."""
        return self.decode(recorded.event_type, recorded.data)
