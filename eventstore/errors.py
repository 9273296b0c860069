"""The event store's typed errors: callers never see a raw asyncpg exception."""

from __future__ import annotations

from eventstore.events import ANY, NO_STREAM, STREAM_EXISTS


class EventStoreError(Exception):
    """Base of every error the event store raises."""


class ConcurrencyError(EventStoreError):
    """The stream was not at the version the writer expected."""

    def __init__(self, stream_id: str, expected_version: int, actual_version: int) -> None:
        super().__init__(
            f"stream {stream_id!r} is at version {actual_version}, "
            f"but the append expected {_describe_expected(expected_version)}"
        )
        self.stream_id = stream_id
        self.expected_version = expected_version
        self.actual_version = actual_version


class TransientConflict(EventStoreError):
    """PostgreSQL aborted the transaction (deadlock, serialization failure): retry it whole."""


class StreamNotFound(EventStoreError):
    """The stream has no events."""

    def __init__(self, stream_id: str) -> None:
        super().__init__(f"stream {stream_id!r} does not exist")
        self.stream_id = stream_id


class DuplicateEventError(EventStoreError):
    """Some, not all, of an append's event ids are already stored, or stored in another stream."""


class InvalidEvent(EventStoreError):
    """An event cannot be stored as given (bad type name, float in data, non-string key...)."""


class AppendOnlyViolation(EventStoreError):
    """Something tried to change or delete a stored event."""


class MigrationError(EventStoreError):
    """The schema cannot be brought to the expected version."""


class StoreUnavailable(EventStoreError):
    """PostgreSQL could not be reached or the connection broke."""


def _describe_expected(expected_version: int) -> str:
    names = {NO_STREAM: "no stream", ANY: "any version", STREAM_EXISTS: "an existing stream"}
    return names.get(expected_version, f"version {expected_version}")
