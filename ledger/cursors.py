"""Opaque list cursors: `[kind, key]` as unpadded URL-safe base64 of JSON.

A list that pages in commit order keys its cursors by a place `[tx_id, global_position]`
(docs/list-order.md); cursors it gave out before then hold a bare global position.
"""

from __future__ import annotations

import base64
import binascii

import orjson

from eventstore import EventStore, Position
from ledger.problems import Problem
from ledger.validation import is_position


def encode_cursor(kind: str, after: Position | str | int) -> str:
    """A cursor: where the next page of the list `kind` starts (after that key or place)."""
    key = list(after) if isinstance(after, Position) else after
    return base64.urlsafe_b64encode(orjson.dumps([kind, key])).decode().rstrip("=")


def cursor_key(cursor: str, kind: str) -> object:
    """The key a cursor of the list `kind` holds, as JSON gave it (the caller checks its
    type and range); 422 for a cursor of another list or one that does not decode."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        cursor_kind, after = orjson.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, TypeError, binascii.Error):
        raise invalid_cursor() from None
    if cursor_kind != kind:
        raise invalid_cursor()
    key: object = after
    return key


async def place_after(store: EventStore, cursor: str | None, kind: str) -> Position | None:
    """Where the next page of the list `kind` starts in `store` (None: at its beginning);
    422 for a cursor no list gave out.

    A cursor from before the list paged in commit order holds a bare global position: it
    starts at that event's place (`EventStore.place_of`)."""
    if cursor is None:
        return None
    after = cursor_key(cursor, kind)
    if type(after) is list and len(after) == 2 and all(is_position(v) for v in after):
        return Position(after[0], after[1])
    if not is_position(after):
        raise invalid_cursor()
    assert isinstance(after, int), "a position is an int"
    place = await store.place_of(after)
    if place is None:
        raise invalid_cursor()
    return place


def invalid_cursor() -> Problem:
    """The answer to a cursor that no list gave out."""
    return Problem(422, "the cursor is not one this list gave out", code="invalid_cursor")
