"""The export file's records (docs/audit-export.md): a header line, one line per event with
its chain fields, an end line. One JSON object per line, UTF-8."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Final

from eventstore import RecordedEvent
from ledger.auditing.times import format_instant

FORMAT: Final = "ledger-audit-export"
FORMAT_VERSION: Final = 1
HASH_RULE: Final = (
    "hash = sha256(prev_hash || int64 big-endian stream_version || int64 big-endian"
    " recorded_at in microseconds since the Unix epoch || canonical JSON of {data, event_id,"
    " event_type, metadata, stream_id}, keys sorted, no spaces, UTF-8); a stream's first"
    " prev_hash is 32 zero bytes"
)


class RecordError(ValueError):
    """A line that is not a well-formed record of the format."""


def header_record(
    since: datetime, until: datetime, schemas: dict[str, str], exported_at: datetime
) -> dict[str, Any]:
    """The first line: what the file is and which period and services it covers."""
    return {
        "record": "header", "format": FORMAT, "format_version": FORMAT_VERSION,
        "since": format_instant(since), "until": format_instant(until),
        "services": schemas, "exported_at": format_instant(exported_at), "hash_rule": HASH_RULE,
    }  # fmt: skip


def event_record(service: str, event: RecordedEvent) -> dict[str, Any]:
    """One event with everything its hash is computed from, and its hashes in hex."""
    return {
        "record": "event", "service": service, "global_position": event.global_position,
        "stream_id": event.stream_id, "stream_version": event.stream_version,
        "event_id": str(event.event_id), "event_type": event.event_type,
        "recorded_at": format_instant(event.recorded_at), "data": event.data,
        "metadata": event.metadata, "prev_hash": event.prev_hash.hex(), "hash": event.hash.hex(),
    }  # fmt: skip


def end_record(events: int, streams: int) -> dict[str, Any]:
    """The last line: how many events and streams the file holds (a cut file lacks it)."""
    return {"record": "end", "events": events, "streams": streams}


def event_of_record(record: dict[str, Any]) -> tuple[str, RecordedEvent]:
    """The service and the event of an event record; RecordError names what is wrong."""
    try:
        event = RecordedEvent(
            global_position=_typed(record, "global_position", int),
            stream_id=_typed(record, "stream_id", str),
            stream_version=_typed(record, "stream_version", int),
            event_id=uuid.UUID(_typed(record, "event_id", str)),
            event_type=_typed(record, "event_type", str),
            data=_typed(record, "data", dict),
            metadata=_typed(record, "metadata", dict),
            recorded_at=_instant(_typed(record, "recorded_at", str)),
            tx_id=0,
            hash=_hex(record, "hash"),
            prev_hash=_hex(record, "prev_hash"),
        )
    except ValueError as error:
        raise RecordError(str(error)) from None
    return _typed(record, "service", str), event


def _typed(record: dict[str, Any], key: str, kind: type) -> Any:
    value = record.get(key)
    if type(value) is not kind:
        raise RecordError(f"{key} is missing or not a {kind.__name__}")
    return value


def _hex(record: dict[str, Any], key: str) -> bytes:
    text = _typed(record, key, str)
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise RecordError(f"{key} is not hexadecimal") from None


def _instant(text: str) -> datetime:
    instant = datetime.fromisoformat(text)
    if instant.tzinfo is None:
        raise RecordError("recorded_at has no offset")
    return instant
