"""The NATS connection every service shares, and the JetStream stream the relay fills."""

from __future__ import annotations

import logging
from typing import Final

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from ledger.settings import Settings

EVENTS_SUBJECT_PREFIX: Final = "ledger"
DEAD_LETTER_PREFIX: Final = "ledger_dead"
_STREAM_NAME_IN_USE: Final = 10058
"""JetStream's error code for "stream name already in use with a different configuration"."""

_log = logging.getLogger(__name__)


def event_subject(service: str, category: str, event_type: str) -> str:
    """`ledger.<service>.<category>.<EventType>`: the subject of one published event."""
    return f"{EVENTS_SUBJECT_PREFIX}.{service}.{category}.{event_type}"


def dead_letter_subject(consumer: str) -> str:
    """Where a consumer parks the messages it could not handle within `max_deliver`."""
    return f"{DEAD_LETTER_PREFIX}.{consumer}"


async def connect(servers: list[str], name: str) -> Client:
    """Connect to the seed servers; the client reconnects forever, across any of them."""
    async def on_disconnect() -> None:
        _log.warning("NATS %s disconnected", name)

    async def on_reconnect() -> None:
        _log.info("NATS %s reconnected", name)

    async def on_error(error: Exception) -> None:
        _log.warning("NATS %s: %s", name, error)

    return await nats.connect(
        servers=servers,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        allow_reconnect=True,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        error_cb=on_error,
    )


async def ensure_streams(js: JetStreamContext, settings: Settings) -> None:
    """Create or update the events stream and the dead-letter stream to match the settings."""
    await _ensure(
        js,
        StreamConfig(
            name=settings.events_stream,
            subjects=[f"{EVENTS_SUBJECT_PREFIX}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            num_replicas=settings.events_stream_replicas,
            # Longer than the relay's longest retry, so a re-publish is always recognised.
            duplicate_window=settings.relay_duplicate_window_s,
            max_age=settings.events_stream_max_age_s,
        ),
    )
    await _ensure(
        js,
        StreamConfig(
            name=f"{settings.events_stream}_DEAD",
            subjects=[f"{DEAD_LETTER_PREFIX}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            num_replicas=settings.events_stream_replicas,
            max_age=settings.dead_letter_max_age_s,
        ),
    )


async def _ensure(js: JetStreamContext, config: StreamConfig) -> None:
    """Create the stream, or update it to `config` when it exists (or another replica
    starting at the same time created it first)."""
    name = config.name or ""
    try:
        await js.stream_info(name)
    except NotFoundError:
        try:
            await js.add_stream(config)
            return
        except BadRequestError as error:
            if error.err_code != _STREAM_NAME_IN_USE:
                raise
            _log.info("stream %s was created meanwhile; updating it to our settings", name)
    await js.update_stream(config)
