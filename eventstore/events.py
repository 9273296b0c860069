"""The values the event store takes and gives: new events, recorded events, positions."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, Final, NamedTuple

NO_STREAM: Final = 0
"""Expected version: the stream must not exist yet."""
ANY: Final = -1
"""Expected version: append whatever the stream's version."""
STREAM_EXISTS: Final = -2
"""Expected version: the stream must already have at least one event."""

JsonObject = Mapping[str, Any]


class Direction(Enum):
    """Which way `read_stream` walks a stream."""

    FORWARD = "forward"
    BACKWARD = "backward"


class Position(NamedTuple):
    """A place in commit order: `read_all` and subscriptions resume after it.

    Ordered as `(tx_id, global_position)`; see docs/read-all-order.md.
    """

    tx_id: int
    global_position: int


START: Final = Position(0, 0)
"""The position before the first event."""


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append: a past-tense type name, its data and its metadata."""

    event_type: str
    data: JsonObject
    metadata: JsonObject = field(default_factory=dict)
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)


class RecordedEvent(NamedTuple):
    """An event as stored, with its place in its stream, in commit order and in the chain.

    A named tuple rather than a frozen dataclass: reads build hundreds of thousands of these
    a second, and a tuple is built several times faster. It is just as immutable.
    """

    global_position: int
    stream_id: str
    stream_version: int
    event_id: uuid.UUID
    event_type: str
    data: dict[str, Any]
    metadata: dict[str, Any]
    recorded_at: datetime
    tx_id: int
    hash: bytes
    prev_hash: bytes

    @property
    def position(self) -> Position:
        """Where this event stands in commit order."""
        return Position(self.tx_id, self.global_position)

    @property
    def category(self) -> str:
        """The stream's category: its id up to the first dash (`account-42` -> `account`)."""
        return self.stream_id.split("-", 1)[0]


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What an append wrote (or, for a repeated append, what the first one wrote)."""

    stream_id: str
    events: tuple[RecordedEvent, ...]
    is_duplicate: bool

    @property
    def version(self) -> int:
        """The stream's version after this append's last event."""
        return self.events[-1].stream_version

    @property
    def position(self) -> Position:
        """The commit-order position of this append's last event."""
        return self.events[-1].position
