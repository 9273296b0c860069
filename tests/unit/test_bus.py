"""Streams are created or updated to the settings, even when replicas start together."""

from __future__ import annotations

from typing import Any

import pytest
from nats.js.api import StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from ledger.bus import _ensure, ensure_streams
from ledger.settings import Settings


class FakeJetStream:
    """Answers like a JetStream server on which another replica may create streams first."""

    def __init__(self, add_error: Exception | None = None) -> None:
        self.add_error = add_error
        self.added: list[StreamConfig] = []
        self.updated: list[StreamConfig] = []

    async def stream_info(self, name: str) -> Any:
        raise NotFoundError(code=404, description="stream not found", err_code=10059)

    async def add_stream(self, config: StreamConfig) -> None:
        if self.add_error is not None:
            raise self.add_error
        self.added.append(config)

    async def update_stream(self, config: StreamConfig) -> None:
        self.updated.append(config)


async def test_a_stream_created_meanwhile_by_another_replica_is_updated() -> None:
    in_use = BadRequestError(
        code=400, err_code=10058, description="stream name already in use with a different"
        " configuration",
    )  # fmt: skip
    js = FakeJetStream(add_error=in_use)
    config = StreamConfig(name="EVENTS", subjects=["ledger.>"])

    await _ensure(js, config)  # type: ignore[arg-type]

    assert js.updated == [config]


async def test_another_refusal_to_create_a_stream_is_raised() -> None:
    js = FakeJetStream(add_error=BadRequestError(code=400, err_code=10052, description="bad"))

    with pytest.raises(BadRequestError):
        await _ensure(js, StreamConfig(name="EVENTS"))  # type: ignore[arg-type]

    assert js.updated == []


async def test_both_streams_keep_messages_for_a_bounded_time() -> None:
    js = FakeJetStream()
    settings = Settings(events_stream_max_age_s=3600, dead_letter_max_age_s=7200)

    await ensure_streams(js, settings)  # type: ignore[arg-type]

    events, dead = js.added
    assert (events.name, events.max_age) == ("LEDGER_EVENTS", 3600)
    assert (dead.name, dead.max_age) == ("LEDGER_EVENTS_DEAD", 7200)
