"""Upcasters: old event shapes become new ones on read; stored rows are never rewritten.

An event's shape is its `event_type` plus `metadata["schema_version"]` (1 when absent). An
upcaster registered for `(event_type, n)` turns shape n into shape n + 1; reads apply the
chain until no upcaster matches, so a reader only ever sees the newest shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from eventstore.errors import InvalidEvent
from eventstore.events import JsonObject, RecordedEvent

SCHEMA_VERSION_KEY: Final = "schema_version"
_MAX_STEPS: Final = 1000

Upcast = Callable[[dict[str, Any]], dict[str, Any]]


def schema_version_of(metadata: dict[str, Any]) -> int:
    """The schema version an event was written with."""
    version = metadata.get(SCHEMA_VERSION_KEY, 1)
    assert isinstance(version, int), "schema_version must be an integer"
    return version


def check_schema_version(metadata: JsonObject) -> None:
    """Raise InvalidEvent unless the schema version in `metadata`, if any, is a positive
    integer: every read of the event takes it as the event's shape (`schema_version_of`)."""
    version = metadata.get(SCHEMA_VERSION_KEY, 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidEvent(
            f"metadata {SCHEMA_VERSION_KEY!r} must be a positive integer, not {version!r}"
        )


class Upcasters:
    """A registry of upcasters, applied to events as they are read."""

    def __init__(self) -> None:
        self._by_shape: dict[tuple[str, int], Upcast] = {}

    def register(self, event_type: str, from_version: int, upcast: Upcast) -> None:
        """Register `upcast` to turn `event_type` at `from_version` into `from_version + 1`."""
        shape = (event_type, from_version)
        if shape in self._by_shape:
            raise ValueError(f"an upcaster for {event_type} v{from_version} is already registered")
        self._by_shape[shape] = upcast

    def __bool__(self) -> bool:
        """True when at least one upcaster is registered."""
        return bool(self._by_shape)

    def upcast(self, event: RecordedEvent) -> RecordedEvent:
        """Return `event` in its newest shape (the same object when nothing applies)."""
        if not self._by_shape:
            return event
        version = schema_version_of(event.metadata)
        data = event.data
        steps = 0
        while (upcast := self._by_shape.get((event.event_type, version))) is not None:
            data = upcast(data)
            version += 1
            steps += 1
            assert steps < _MAX_STEPS, "upcaster chain does not end"
        if steps == 0:
            return event
        metadata = {**event.metadata, SCHEMA_VERSION_KEY: version}
        return event._replace(data=data, metadata=metadata)
