"""The export file checked offline: an intact file passes; a changed, reordered, missing or
cut line is named by its line, stream and version. Also the instants operators type, and
how a transfer's events are described."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest

from eventstore import RecordedEvent
from eventstore.hashing import GENESIS_HASH, canonical_json, chain_hash, event_body
from ledger.auditing import parse_instant, verify_export
from ledger.auditing.export_format import end_record, event_record, header_record
from ledger.auditing.transfer import describe

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


def chained(stream_id: str, count: int, first_version: int = 1,
            prev_hash: bytes = GENESIS_HASH) -> list[RecordedEvent]:  # fmt: skip
    """`count` events of a stream, linked and hashed as the store does."""
    events = []
    for index in range(count):
        version = first_version + index
        data = {"amount_minor": 100 * version, "note": "ünïcode"}
        metadata = {"correlation_id": "c-1"}
        event_id, at = uuid.uuid4(), T0 + timedelta(seconds=version)
        body = event_body(stream_id, event_id, "Deposited", canonical_json(data),
                          canonical_json(metadata))  # fmt: skip
        hash_ = chain_hash(prev_hash, version, at, body)
        events.append(RecordedEvent(version, stream_id, version, event_id, "Deposited", data,
                                    metadata, at, 1, hash_, prev_hash))  # fmt: skip
        prev_hash = hash_
    return events


def records(*streams: list[RecordedEvent]) -> list[dict[str, Any]]:
    events = [event for stream in streams for event in stream]
    return [
        header_record(T0, T0 + timedelta(days=1), {"account": "account"}, T0),
        *(event_record("account", event) for event in events),
        end_record(len(events), len(streams)),
    ]


def written(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return path


def test_an_intact_export_verifies(tmp_path: Path) -> None:
    lines = records(chained("account-a", 3), chained("account-b", 2))

    report = verify_export(written(tmp_path / "e.jsonl", lines))

    assert report.is_intact, report.breaks
    assert (report.events, report.streams, report.continued_streams) == (5, 2, 0)


def test_a_stream_continued_from_an_earlier_period_verifies(tmp_path: Path) -> None:
    earlier = chained("account-a", 4)
    later = chained("account-a", 2, first_version=5, prev_hash=earlier[-1].hash)

    report = verify_export(written(tmp_path / "e.jsonl", records(later)))

    assert report.is_intact, report.breaks
    assert report.continued_streams == 1


def test_a_changed_amount_is_named_by_line_stream_and_version(tmp_path: Path) -> None:
    lines = records(chained("account-a", 3), chained("account-b", 3))
    lines[5]["data"]["amount_minor"] += 1  # account-b version 2

    report = verify_export(written(tmp_path / "e.jsonl", lines))

    assert [(b.line, b.stream_id, b.stream_version, b.reason) for b in report.breaks] == [
        (6, "account-b", 2, "hash does not match the event")
    ]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda lines: lines.pop(2), "version 2 expected, found 3"),
        (lambda lines: lines.insert(3, lines.pop(2)), "version 2 expected, found 3"),
        (lambda lines: lines[3].update(prev_hash="00" * 32), "prev_hash does not link"),
        (lambda lines: lines[1].update(prev_hash="11" * 32), "must link to the zero hash"),
        (lambda lines: lines[2].update(stream_id="account-z"), "hash does not match"),
        (lambda lines: lines[2]["data"].update(amount_minor=1.5), "cannot be recomputed"),
        (lambda lines: lines[2].pop("hash"), "hash is missing"),
    ],
)
def test_a_broken_chain_in_the_file_is_found(tmp_path: Path, change: Any, reason: str) -> None:
    lines = records(chained("account-a", 4))
    change(lines)

    report = verify_export(written(tmp_path / "e.jsonl", lines))

    assert not report.is_intact
    assert reason in report.breaks[0].reason


def test_a_cut_file_and_a_file_that_is_no_export_are_found(tmp_path: Path) -> None:
    lines = records(chained("account-a", 2))

    cut = verify_export(written(tmp_path / "cut.jsonl", lines[:-1]))
    no_export = verify_export(written(tmp_path / "other.jsonl", lines[1:]))
    miscounted = verify_export(written(tmp_path / "count.jsonl",
                                       [*lines[:-1], end_record(3, 1)]))  # fmt: skip

    assert "cut short" in cut.breaks[0].reason
    assert no_export.breaks[0].line == 1
    assert "no header" in no_export.breaks[0].reason
    assert "counts 3 events" in miscounted.breaks[0].reason


def test_a_stream_split_across_the_file_is_found(tmp_path: Path) -> None:
    a, b = chained("account-a", 2), chained("account-b", 1)
    lines = records([a[0], *b, a[1]])
    lines[-1] = end_record(3, 2)

    report = verify_export(written(tmp_path / "e.jsonl", lines))

    assert report.breaks[0].line == 4
    assert "not together" in report.breaks[0].reason


def test_a_line_that_is_not_json_is_named(tmp_path: Path) -> None:
    path = written(tmp_path / "e.jsonl", records(chained("account-a", 1)))
    path.write_bytes(path.read_bytes().replace(b'{"record":"event"', b'{"record":"event",,', 1))

    report = verify_export(path)

    assert report.breaks[0].line == 2
    assert "not JSON" in report.breaks[0].reason


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T12:00:00Z", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01T14:00:00+02:00", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01T12:00:00", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC)),
        (" 2024-05-01T12:00:00.5-05:00 ", datetime(2024, 5, 1, 12, 0, 0, 500000,
                                                   tzinfo=timezone(timedelta(hours=-5)))),
    ],
)
def test_instants_are_iso_8601_and_utc_without_an_offset(text: str, expected: datetime) -> None:
    assert parse_instant(text) == expected


@pytest.mark.parametrize("text", ["yesterday", "", "2024-13-01", "12:00"])
def test_an_instant_that_is_not_iso_8601_says_so(text: str) -> None:
    with pytest.raises(ValueError, match="not an ISO 8601 time"):
        parse_instant(text)


def test_an_event_is_described_by_its_telling_fields_and_legs() -> None:
    leg = {"leg_id": "l1", "from_account": "a", "to_account": "b", "amount_minor": 5,
           "currency": "USD"}  # fmt: skip

    assert describe({"step": "reserve", "attempt": 2, "is_compensation": False}) == (
        "step=reserve, attempt=2"
    )
    assert describe({"legs": [leg], "saga_id": "x"}) == "leg l1: a -> b 5 USD"
    assert describe({"error": "x" * 100}).endswith("…")
