"""`ledger audit verify --file`: check an export offline, with no database.

Each stream's events in the file must be together and in version order, without a gap;
each must link to the one before (`prev_hash` is the previous `hash`) and its hash must
recompute from its fields. A stream that starts at version 1 must start from the zero hash;
one that starts later continues from an earlier period, whose last hash the auditor holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from eventstore import EventStoreError, RecordedEvent
from eventstore.hashing import GENESIS_HASH, recompute_hash
from ledger.auditing.export_format import FORMAT, FORMAT_VERSION, RecordError, event_of_record


@dataclass(frozen=True, slots=True)
class FileBreak:
    """Where the file breaks: its line (1-based), the stream and version when known."""

    line: int
    stream_id: str | None
    stream_version: int | None
    reason: str

    @property
    def place(self) -> str:
        """`line 7 (account-42 version 3)`."""
        if self.stream_id is None:
            return f"line {self.line}"
        return f"line {self.line} ({self.stream_id} version {self.stream_version})"

    def as_json(self) -> dict[str, Any]:
        """The break as a JSON object."""
        return asdict(self)


@dataclass(slots=True)
class FileReport:
    """What the file holds and where it breaks."""

    path: Path
    header: dict[str, Any] = field(default_factory=dict)
    events: int = 0
    streams: int = 0
    continued_streams: int = 0
    """Streams whose first event in the file is not their first: they link to an earlier
    period's export."""
    breaks: list[FileBreak] = field(default_factory=list)

    @property
    def is_intact(self) -> bool:
        """True when nothing breaks."""
        return not self.breaks


@dataclass(slots=True)
class _Chain:
    stream_id: str
    next_version: int
    last_hash: bytes
    is_broken: bool = False


def verify_export(path: Path) -> FileReport:
    """Check the export at `path`; OSError when it cannot be read."""
    report = FileReport(path)
    lines = _records(path, report)
    first = next(lines, None)
    if first is None or not _is_header(first[1]):
        report.breaks.append(FileBreak(1, None, None, f"not a {FORMAT} file (no header line)"))
        return report
    report.header = first[1]
    _check_events(lines, report)
    return report


def _records(path: Path, report: FileReport) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of each line; a line that is no JSON object is a break."""
    with path.open("rb") as file:
        for number, line in enumerate(file, start=1):
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as error:
                report.breaks.append(FileBreak(number, None, None, f"not JSON: {error}"))
                continue
            if not isinstance(record, dict):
                report.breaks.append(FileBreak(number, None, None, "not a JSON object"))
                continue
            yield number, record


def _is_header(record: dict[str, Any]) -> bool:
    return (record.get("record"), record.get("format"), record.get("format_version")) == (
        "header", FORMAT, FORMAT_VERSION,
    )  # fmt: skip


def _check_events(lines: Iterator[tuple[int, dict[str, Any]]], report: FileReport) -> None:
    seen: set[str] = set()
    chain: _Chain | None = None
    end: tuple[int, dict[str, Any]] | None = None
    last_line = 1
    for number, record in lines:
        last_line = number
        if end is not None:
            report.breaks.append(FileBreak(number, None, None, "a line after the end record"))
            continue
        if record.get("record") == "end":
            end = (number, record)
            continue
        if record.get("record") != "event":
            report.breaks.append(FileBreak(number, None, None, "neither an event nor the end"))
            continue
        try:
            _, event = event_of_record(record)
        except RecordError as error:
            report.breaks.append(FileBreak(number, None, None, f"not an event record: {error}"))
            continue
        report.events += 1
        if chain is None or chain.stream_id != event.stream_id:
            chain = _start(number, event, seen, report)
        else:
            _link(number, event, chain, report)
    _check_end(end, last_line, report)


def _start(number: int, event: RecordedEvent, seen: set[str], report: FileReport) -> _Chain:
    """The chain of a stream met for the first time at this line."""
    chain = _Chain(event.stream_id, event.stream_version, event.prev_hash)
    if event.stream_id in seen:
        _break(report, number, event, chain, "the stream's events are not together in the file")
        return chain
    seen.add(event.stream_id)
    report.streams += 1
    if event.stream_version == 1 and event.prev_hash != GENESIS_HASH:
        _break(report, number, event, chain, "a stream's first event must link to the zero hash")
    elif event.stream_version > 1:
        report.continued_streams += 1
    if not chain.is_broken:
        _link(number, event, chain, report)
    return chain


def _link(number: int, event: RecordedEvent, chain: _Chain, report: FileReport) -> None:
    if chain.is_broken:
        return
    if event.stream_version != chain.next_version:
        reason = f"version {chain.next_version} expected, found {event.stream_version}"
        _break(report, number, event, chain, reason)
    elif event.prev_hash != chain.last_hash:
        _break(report, number, event, chain, "prev_hash does not link to the event before")
    elif (problem := _hash_problem(event)) is not None:
        _break(report, number, event, chain, problem)
    else:
        chain.next_version += 1
        chain.last_hash = event.hash


def _hash_problem(event: RecordedEvent) -> str | None:
    try:
        is_match = recompute_hash(event) == event.hash
    except EventStoreError as error:
        return f"the hash cannot be recomputed: {error}"
    return None if is_match else "hash does not match the event"


def _break(
    report: FileReport, number: int, event: RecordedEvent, chain: _Chain, reason: str
) -> None:
    chain.is_broken = True
    report.breaks.append(FileBreak(number, event.stream_id, event.stream_version, reason))


def _check_end(end: tuple[int, dict[str, Any]] | None, last_line: int, report: FileReport
               ) -> None:  # fmt: skip
    if end is None:
        report.breaks.append(FileBreak(
            last_line, None, None, "the file ends here without its end record: it is cut short"
        ))  # fmt: skip
        return
    number, record = end
    counted = (record.get("events"), record.get("streams"))
    if counted != (report.events, report.streams):
        report.breaks.append(FileBreak(
            number, None, None,
            f"the end record counts {counted[0]} events in {counted[1]} streams; the file"
            f" holds {report.events} in {report.streams}",
        ))  # fmt: skip
