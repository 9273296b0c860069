"""Canonical JSON and the per-stream hash chain, checked without a database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from eventstore import ChainBreak, InvalidEvent, RecordedEvent
from eventstore.hashing import (
    GENESIS_HASH,
    canonical_json,
    chain_hash,
    event_body,
    find_break,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def chain(stream_id: str, amounts: list[int]) -> list[RecordedEvent]:
    """A well-linked stream of Deposited events, hashed as the store hashes them."""
    events: list[RecordedEvent] = []
    prev_hash = GENESIS_HASH
    for version, amount_minor in enumerate(amounts, start=1):
        event_id = uuid.uuid4()
        data = {"amount_minor": amount_minor}
        recorded_at = T0 + timedelta(seconds=version)
        body = event_body(stream_id, event_id, "Deposited", canonical_json(data), b"{}")
        event_hash = chain_hash(prev_hash, version, recorded_at, body)
        events.append(
            RecordedEvent(
                global_position=version,
                stream_id=stream_id,
                stream_version=version,
                event_id=event_id,
                event_type="Deposited",
                data=data,
                metadata={},
                recorded_at=recorded_at,
                tx_id=1,
                hash=event_hash,
                prev_hash=prev_hash,
            )
        )
        prev_hash = event_hash
    return events


def changed(event: RecordedEvent, **changes: Any) -> RecordedEvent:
    """A copy of `event` with some fields changed, as tampering with a stored row would."""
    fields = (
        "global_position", "stream_id", "stream_version", "event_id", "event_type", "data",
        "metadata", "recorded_at", "tx_id", "hash", "prev_hash",
    )  # fmt: skip
    return RecordedEvent(**{name: getattr(event, name) for name in fields} | changes)


# --- canonical JSON -----------------------------------------------------------------------


def test_canonical_json_does_not_depend_on_key_order() -> None:
    one = {"b": 1, "a": {"y": [1, "x"], "x": None}}
    other = {"a": {"x": None, "y": [1, "x"]}, "b": 1}

    assert canonical_json(one) == canonical_json(other)


def test_canonical_json_is_compact_and_sorted() -> None:
    encoded = canonical_json({"b": True, "a": {"d": 2, "c": [1, "é"]}})

    assert encoded == '{"a":{"c":[1,"é"],"d":2},"b":true}'.encode()


@pytest.mark.parametrize(
    "value",
    [
        {"amount": 1.5},
        {"nested": {"deeper": [0.1]}},
        {1: "a"},
        {"nested": {2: "b"}},
        {"note": "nul\x00"},
        {"when": T0},
        {"id": uuid.uuid4()},
        {"raw": b"bytes"},
        {"amount": Decimal("1.5")},
        {"tags": {"a", "b"}},
    ],
)
def test_canonical_json_refuses_what_does_not_round_trip(value: dict[Any, Any]) -> None:
    with pytest.raises(InvalidEvent):
        canonical_json(value)


def test_canonical_json_refuses_unbounded_nesting() -> None:
    deep: dict[str, Any] = {}
    for _ in range(100):
        deep = {"next": deep}

    with pytest.raises(InvalidEvent):
        canonical_json(deep)


# --- the chain ----------------------------------------------------------------------------

BODY = event_body(uuid.UUID(int=0).hex, uuid.UUID(int=1), "Deposited", b"{}", b"{}")


@pytest.mark.parametrize(
    "changed",
    [
        (b"\x01" * 32, 1, T0, BODY),
        (GENESIS_HASH, 2, T0, BODY),
        (GENESIS_HASH, 1, T0 + timedelta(microseconds=1), BODY),
        (GENESIS_HASH, 1, T0, BODY + b" "),
    ],
    ids=["prev_hash", "version", "recorded_at", "body"],
)
def test_chain_hash_changes_with_each_input(changed: tuple[bytes, int, datetime, bytes]) -> None:
    assert chain_hash(*changed) != chain_hash(GENESIS_HASH, 1, T0, BODY)


def test_chain_hash_is_a_sha256_digest() -> None:
    assert len(chain_hash(GENESIS_HASH, 1, T0, BODY)) == 32


def test_a_good_chain_has_no_break() -> None:
    assert find_break("account-1", chain("account-1", [1, 2, 3])) is None


def test_an_empty_chain_has_no_break() -> None:
    assert find_break("account-1", []) is None


def test_a_changed_event_breaks_its_hash() -> None:
    events = chain("account-1", [1, 2, 3])
    events[1] = changed(events[1], data={"amount_minor": 2000})

    assert find_break("account-1", events) == ChainBreak(
        "account-1", 2, "hash does not match the event"
    )


def test_a_broken_prev_link_is_found() -> None:
    events = chain("account-1", [1, 2, 3])
    events[2] = changed(events[2], prev_hash=events[0].hash)

    assert find_break("account-1", events) == ChainBreak("account-1", 3, "prev_hash does not link")


def test_a_missing_version_is_found() -> None:
    events = chain("account-1", [1, 2, 3])
    del events[1]

    assert find_break("account-1", events) == ChainBreak(
        "account-1", 2, "version missing from the stream"
    )
