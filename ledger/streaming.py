"""Server-Sent Events: follow one stream live, its past events first, then each new one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Final

import orjson
from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import StreamingResponse

from eventstore import EventStore, RecordedEvent
from eventstore.notifier import Notifier
from ledger.dependencies import HostDep
from ledger.problems import Problem

HEARTBEAT_S: Final = 15.0
PAGE_EVENTS: Final = 500
STREAM_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,199}$"

router = APIRouter(tags=["streams"])


@router.get(
    "/v1/streams/{stream_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, 404: {"description": "No stream"}},
)
async def follow_stream(
    request: Request,
    host: HostDep,
    stream_id: Annotated[str, Path(pattern=STREAM_ID_PATTERN)],
    from_version: Annotated[int, Query(ge=1, le=2**62)] = 1,
    last_event_id: Annotated[str | None, Header(max_length=20)] = None,
) -> StreamingResponse:
    """The stream's events as `text/event-stream`, past ones first, then live.

    Each event's SSE id is its stream version; a reconnecting client sends `Last-Event-ID`
    and resumes after it.
    """
    store = host.store_for_stream(stream_id)
    if store is None or await store.stream_version(stream_id) == 0:
        raise Problem(404, f"stream {stream_id!r} does not exist", code="not_found")
    if last_event_id is not None and last_event_id.isdigit():
        from_version = int(last_event_id) + 1
    events = _follow(request, store, host.notifier_for(store), stream_id, from_version)
    return StreamingResponse(
        events, media_type="text/event-stream", headers={"Cache-Control": "no-store"}
    )


async def _follow(
    request: Request, store: EventStore, notifier: Notifier, stream_id: str, next_version: int
) -> AsyncIterator[bytes]:
    while not await request.is_disconnected():
        seen = notifier.generation
        page = await store.read_stream(stream_id, from_version=next_version, limit=PAGE_EVENTS)
        for event in page:
            yield _sse(event)
            next_version = event.stream_version + 1
        if len(page) < PAGE_EVENTS:
            before = notifier.generation
            await notifier.wait_past(seen, HEARTBEAT_S)
            if notifier.generation == before:
                yield b": keepalive\n\n"


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
