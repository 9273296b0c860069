"""The ledger's JSON log lines of a logger, as written: the request context is read when a
record is emitted, so a test that keeps records and formats them later would miss it."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import orjson

from ledger.logs import JsonFormatter


class JsonLines(logging.Handler):
    """Keeps each record as the JSON object `ledger.logs` writes for it."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(orjson.loads(self.format(record)))


@contextlib.contextmanager
def json_lines(logger_name: str) -> Iterator[list[dict[str, Any]]]:
    """The JSON lines `logger_name` writes within the block."""
    handler = JsonLines()
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
