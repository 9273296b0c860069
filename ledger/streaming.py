"""Server-Sent Events: follow one stream live, its past events first, then each new one."""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import AsyncIterator
from typing import Annotated, Final

import orjson
from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import StreamingResponse

from eventstore import EventStore, RecordedEvent
from eventstore.notifier import Notifier
from ledger.auth import CurrentPrincipal
from ledger.dependencies import HostDep
from ledger.problems import Problem, problem_responses

HEARTBEAT_S: Final = 15.0
PAGE_EVENTS: Final = 500
STREAM_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,199}$"
MAX_VERSION: Final = 2**62
"""Beyond any stream's version, and within PostgreSQL's bigint."""
_EVENT_ID: Final = re.compile(r"[0-9]{1,20}")

router = APIRouter(tags=["streams"])


@router.get(
    "/v1/streams/{stream_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **problem_responses(404, 422, 503)},
)
async def follow_stream(
    request: Request,
    host: HostDep,
    principal: CurrentPrincipal,
    stream_id: Annotated[str, Path(pattern=STREAM_ID_PATTERN)],
    from_version: Annotated[int, Query(ge=1, le=MAX_VERSION)] = 1,
    last_event_id: Annotated[str | None, Header(max_length=20)] = None,
) -> StreamingResponse:
    """The stream's events as `text/event-stream`, past ones first, then live.

    Each event's SSE id is its stream version; a reconnecting client sends `Last-Event-ID`
    and resumes after it. The stream ends when the client leaves, the host stops, or the
    request's token expires (the client reconnects with a fresh one and `Last-Event-ID`).
    """
    store = host.store_for_stream(stream_id)
    if store is None or await store.stream_version(stream_id) == 0:
        raise Problem(404, f"stream {stream_id!r} does not exist", code="not_found")
    if last_event_id is not None:
        from_version = _resumed_from(last_event_id, from_version)
    notifier = host.notifier_for(store)
    events = _follow(request, store, notifier, stream_id, from_version, host.is_stopping,
                     valid_until_s=principal.valid_until_s)  # fmt: skip
    return StreamingResponse(
        events, media_type="text/event-stream", headers={"Cache-Control": "no-store"}
    )


def _resumed_from(last_event_id: str, from_version: int) -> int:
    """The version after `Last-Event-ID`; one that is not a version of ours is ignored (a
    browser resends whatever id it last saw), one beyond any version is refused (422)."""
    if _EVENT_ID.fullmatch(last_event_id) is None:
        return from_version
    last_version = int(last_event_id)
    if last_version >= MAX_VERSION:
        raise Problem(422, f"Last-Event-ID {last_event_id} is beyond any stream version",
                      code="validation_failed")  # fmt: skip
    return last_version + 1


async def _follow(
    request: Request,
    store: EventStore,
    notifier: Notifier,
    stream_id: str,
    next_version: int,
    is_stopping: asyncio.Event,
    *,
    valid_until_s: float | None = None,
) -> AsyncIterator[bytes]:
    """The stream's events from `next_version` on, until the client leaves, the host stops,
    or `valid_until_s` (epoch seconds; None: no end) passes: a token that expired proves
    nothing any more, and must not go on being served what is appended after."""
    while not is_stopping.is_set() and not await request.is_disconnected():
        left_s = _left_s(valid_until_s)
        if left_s <= 0:
            return
        seen = notifier.generation
        page = await store.read_stream(stream_id, from_version=next_version, limit=PAGE_EVENTS)
        for event in page:
            yield _sse(event)
            next_version = event.stream_version + 1
        if len(page) < PAGE_EVENTS:
            await _wait_for_append(notifier, seen, is_stopping, min(HEARTBEAT_S, left_s))
            is_quiet = notifier.generation == seen and not is_stopping.is_set()
            if is_quiet and _left_s(valid_until_s) > 0:
                yield b": keepalive\n\n"  # a heartbeat's time passed without any append


def _left_s(valid_until_s: float | None) -> float:
    """Seconds until `valid_until_s` (epoch seconds): infinite for None, <= 0 once passed."""
    return math.inf if valid_until_s is None else valid_until_s - time.time()


async def _wait_for_append(
    notifier: Notifier, seen: int, is_stopping: asyncio.Event, timeout_s: float
) -> None:
    """Until an append newer than `seen`, `timeout_s`, or the host stopping."""
    waits = {
        asyncio.create_task(notifier.wait_past(seen, timeout_s)),
        asyncio.create_task(is_stopping.wait()),
    }
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


def _sse(event: RecordedEvent) -> bytes:
    body = orjson.dumps(
        {
            "stream_id": event.stream_id,
            "stream_version": event.stream_version,
            "event_id": str(event.event_id),
            "event_type": event.event_type,
            "data": event.data,
            "metadata": event.metadata,
            "recorded_at": event.recorded_at.isoformat(),
            "hash": event.hash.hex(),
        }
    )
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (
        event.stream_version, event.event_type.encode(), body,
    )  # fmt: skip
