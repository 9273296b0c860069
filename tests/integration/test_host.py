"""The service host: readiness follows its servers, errors are problem+json, context and
events travel from HTTP to the store to NATS, and a stream can be followed live over SSE."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import uvicorn
from fastapi import FastAPI
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from eventstore import DuplicateEventError
from ledger import streaming
from ledger.embedded import EmbeddedNats, free_port
from ledger.host import Runtime, ServiceHost, running
from ledger.http import create_app
from ledger.settings import Settings
from tests.integration.authorized import TEST_SUBJECT, authorized_client, bearer
from tests.integration.notes_service import NotesService


def settings_for(database_url: str, nats_url: str, **overrides: Any) -> Settings:
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    return Settings(
        database_url=database_url, nats_url=nats_url, schema_prefix=prefix,
        subscription_poll_interval_s=0.05, **overrides,
    )  # fmt: skip


class FlakyNotesService(NotesService):
    """Notes, with a background task that crashes on its first run when told to."""

    def __init__(self) -> None:
        self.runs = 0
        self.crash = asyncio.Event()

    async def start(self, runtime: Runtime) -> None:
        await super().start(runtime)
        runtime.spawn(self.work, "flaky")

    async def work(self) -> None:
        self.runs += 1
        if self.runs == 1:
            await self.crash.wait()
            raise RuntimeError("flaky work fell over")
        await asyncio.Event().wait()


@pytest.fixture
async def host(database_url: str, nats_url: str, pool: asyncpg.Pool) -> AsyncIterator[ServiceHost]:
    settings = settings_for(database_url, nats_url)
    async with running(ServiceHost(settings, [NotesService()])) as started:
        yield started
    await pool.execute(f"drop schema {settings.schema_for('notes')} cascade")


def client_of(host: ServiceHost, app: FastAPI | None = None) -> httpx.AsyncClient:
    return authorized_client(app or create_app(host, manage_host=False))


async def relayed(subscription: JetStreamContext.PushSubscription, stream_id: str) -> Msg:
    """The first message of `stream_id` (the stream keeps other tests' messages too)."""
    while True:
        message = await asyncio.wait_for(subscription.next_msg(timeout=10), 10)
        if orjson.loads(message.data)["stream_id"] == stream_id:
            return message


async def eventually_status(client: httpx.AsyncClient, path: str, status: int) -> httpx.Response:
    for _ in range(300):
        response = await client.get(path)
        if response.status_code == status:
            return response
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} never answered {status}")


async def test_ready_is_503_while_nats_is_down_and_200_after(
    database_url: str, tmp_path: Path
) -> None:
    nats_server = EmbeddedNats(tmp_path)
    nats_url = nats_server.start()
    try:
        host = ServiceHost(settings_for(database_url, nats_url), [])
        async with running(host), client_of(host) as client:
            assert (await client.get("/health/ready")).status_code == 200

            nats_server.stop()
            down = await eventually_status(client, "/health/ready", 503)
            nats_server.start()
            up = await eventually_status(client, "/health/ready", 200)
            live = await client.get("/health/live")
    finally:
        nats_server.stop()

    assert down.headers["content-type"] == "application/problem+json"
    assert down.json()["checks"]["nats"] is False
    assert up.json()["checks"] == {"nats": True}
    assert live.status_code == 200


async def test_errors_are_problem_json(host: ServiceHost) -> None:
    async with client_of(host) as client:
        missing = await client.get("/v1/streams/note-404/events")
        invalid = await client.post("/v1/notes/1", json={"text": "x", "extra": 1})
        unrouted = await client.get("/v1/nowhere")

    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["code"] == "not_found"
    assert invalid.status_code == 422
    assert invalid.json()["errors"][0]["location"] == ["body", "extra"]
    assert unrouted.status_code == 404
    assert unrouted.json()["status"] == 404


async def test_an_idle_host_holds_one_connection_per_store_for_its_listener(
    host: ServiceHost,
) -> None:
    runtime = host.runtimes["notes"]
    store = runtime.store
    subscription = await runtime.js.subscribe(
        "ledger.notes.note.NoteWritten", stream=host.settings.events_stream, ordered_consumer=True
    )
    note_id = uuid.uuid4().hex[:8]
    async with client_of(host) as client:
        await client.post(f"/v1/notes/{note_id}", json={"text": "hi"})
    await relayed(subscription, f"note-{note_id}")  # the relay runs, with its notifier by now
    await subscription.unsubscribe()
    for _ in range(200):  # and gives its connection back once it finds nothing to do
        in_use = store.pool.get_size() - store.pool.get_idle_size()
        if in_use == 1:
            break
        await asyncio.sleep(0.05)

    # The relay waits on the store's shared notifier rather than listening on its own.
    assert in_use == 1


async def test_context_travels_from_http_to_event_to_nats(host: ServiceHost) -> None:
    runtime = host.runtimes["notes"]
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {"X-Correlation-Id": "corr-42", "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    subscription = await runtime.js.subscribe(
        "ledger.notes.note.NoteWritten", stream=host.settings.events_stream, ordered_consumer=True
    )
    note_id = uuid.uuid4().hex[:8]

    async with client_of(host) as client:
        response = await client.post(f"/v1/notes/{note_id}", json={"text": "hi"}, headers=headers)
        metrics = (await client.get("/metrics")).text

    [event] = await runtime.store.read_stream(f"note-{note_id}")
    message = await relayed(subscription, f"note-{note_id}")
    await subscription.unsubscribe()
    assert response.status_code == 201
    assert response.headers["X-Correlation-Id"] == "corr-42"
    assert event.metadata["correlation_id"] == "corr-42"
    assert event.metadata["traceparent"].split("-")[1] == trace_id
    assert message.headers is not None
    assert message.headers["X-Correlation-Id"] == "corr-42"
    assert message.headers["Nats-Msg-Id"] == str(event.event_id)
    assert 'ledger_http_request_seconds_count{method="POST",route="/v1/notes/{note_id}"' in metrics
    assert 'ledger_relay_lag_events{service="notes"}' in metrics


async def test_a_client_follows_a_stream_live_over_sse(host: ServiceHost) -> None:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(host, manage_host=False), port=port, lifespan="off",
                       log_level="warning", ws="none")
    )  # fmt: skip
    serving = asyncio.create_task(server.serve())
    note_id = uuid.uuid4().hex[:8]
    try:
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                     headers=bearer(host.settings)) as client:
            await client.post(f"/v1/notes/{note_id}", json={"text": "before"})
            received = await asyncio.wait_for(follow_while_writing(client, note_id), 20)
    finally:
        server.should_exit = True
        await serving

    assert [event["data"]["text"] for event in received] == ["before", "after-1", "after-2"]
    assert [event["stream_version"] for event in received] == [1, 2, 3]


async def follow_while_writing(client: httpx.AsyncClient, note_id: str) -> list[dict[str, Any]]:
    received: list[dict[str, Any]] = []
    async with client.stream("GET", f"/v1/streams/note-{note_id}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            received.append(orjson.loads(line.removeprefix("data: ")))
            if len(received) == 1:
                for text in ("after-1", "after-2"):
                    await client.post(f"/v1/notes/{note_id}", json={"text": text})
            if len(received) == 3:
                return received
    return received


async def test_a_crashed_background_task_is_restarted_and_not_ready_meanwhile(
    database_url: str, nats_url: str, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(database_url, nats_url, task_restart_first_s=0.5)
    service = FlakyNotesService()
    try:
        async with running(ServiceHost(settings, [service])) as host, client_of(host) as client:
            before = await client.get("/health/ready")
            service.crash.set()
            down = await eventually_status(client, "/health/ready", 503)
            up = await eventually_status(client, "/health/ready", 200)
            metrics = (await client.get("/metrics")).text
    finally:
        await pool.execute(f"drop schema {settings.schema_for('notes')} cascade")

    assert before.json()["checks"]["task:notes:flaky"] is True
    assert down.json()["checks"]["task:notes:flaky"] is False
    assert down.json()["checks"]["task:notes:relay"] is True
    assert up.json()["checks"]["task:notes:flaky"] is True
    assert service.runs == 2
    assert "background task notes:flaky crashed" in caplog.text
    assert "flaky work fell over" in caplog.text
    assert 'ledger_background_task_up{task="notes:flaky"} 1.0' in metrics


async def test_an_unhandled_error_is_a_500_problem_with_the_correlation_id(
    host: ServiceHost, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(host, manage_host=False)

    @app.get("/v1/boom")
    async def boom() -> None:
        raise RuntimeError("kaboom")

    @app.get("/v1/duplicate")
    async def duplicate() -> None:
        raise DuplicateEventError("append to 'note-1' reuses stored event ids")

    async with client_of(host, app) as client:
        failed = await client.get("/v1/boom", headers={"X-Correlation-Id": "corr-500"})
        conflicting = await client.get("/v1/duplicate")
        metrics = (await client.get("/metrics")).text

    assert failed.status_code == 500
    assert failed.headers["content-type"] == "application/problem+json"
    assert failed.headers["X-Correlation-Id"] == "corr-500"
    assert "traceparent" in failed.headers
    assert failed.json()["code"] == "internal_error"
    assert failed.json()["correlation_id"] == "corr-500"
    assert "kaboom" not in failed.text
    assert "kaboom" in caplog.text
    assert 'route="/v1/boom",status="500"' in metrics
    assert conflicting.status_code == 409
    assert conflicting.json()["code"] == "duplicate"
    assert "X-Correlation-Id" in conflicting.headers


async def test_an_http_client_cannot_choose_the_actor_in_event_metadata(
    host: ServiceHost,
) -> None:
    note_id = uuid.uuid4().hex[:8]

    async with client_of(host) as client:
        response = await client.post(
            f"/v1/notes/{note_id}", json={"text": "hi"}, headers={"X-Actor": "mallory"}
        )

    [event] = await host.runtimes["notes"].store.read_stream(f"note-{note_id}")
    assert response.status_code == 201
    assert event.metadata["actor"] == TEST_SUBJECT  # the token's subject, nothing else
    assert "mallory" not in orjson.dumps(event.metadata).decode()


async def test_a_last_event_id_beyond_any_version_is_refused(host: ServiceHost) -> None:
    note_id = uuid.uuid4().hex[:8]

    async with client_of(host) as client:
        await client.post(f"/v1/notes/{note_id}", json={"text": "hi"})
        response = await client.get(
            f"/v1/streams/note-{note_id}/events", headers={"Last-Event-ID": "9" * 20}
        )

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert "Last-Event-ID" in response.json()["detail"]


async def test_a_followed_stream_ends_when_the_host_stops(host: ServiceHost) -> None:
    note_id = uuid.uuid4().hex[:8]
    store = host.runtimes["notes"].store
    async with client_of(host) as client:
        await client.post(f"/v1/notes/{note_id}", json={"text": "hi"})

    class StillConnected:
        async def is_disconnected(self) -> bool:
            return False

    events = streaming._follow(
        StillConnected(),  # type: ignore[arg-type]
        store, host.notifier_for(store), f"note-{note_id}", 1, host.is_stopping,
    )  # fmt: skip
    first = await anext(events)

    async def second() -> bytes:
        return await anext(events)

    waiting = asyncio.create_task(second())
    await asyncio.sleep(0.1)
    host.is_stopping.set()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiting, 2)  # well before the heartbeat

    assert first.startswith(b"id: 1\n")


async def test_the_streams_keep_messages_for_a_bounded_time(host: ServiceHost) -> None:
    js = host.runtimes["notes"].js

    events = await js.stream_info(host.settings.events_stream)
    dead = await js.stream_info(f"{host.settings.events_stream}_DEAD")

    assert events.config.max_age == host.settings.events_stream_max_age_s
    assert dead.config.max_age == host.settings.dead_letter_max_age_s


class StuckNotesService(NotesService):
    """Notes whose stop never returns and which keeps a pool connection it never gives back,
    as a service stuck on a peer that does not answer would."""

    async def start(self, runtime: Runtime) -> None:
        await super().start(runtime)
        self.held = await runtime.store.pool.acquire()

    async def stop(self) -> None:
        await asyncio.Event().wait()


async def test_a_stuck_service_does_not_keep_the_host_from_stopping(
    database_url: str, nats_url: str, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(database_url, nats_url, shutdown_grace_s=0.2)
    service = StuckNotesService()
    host = ServiceHost(settings, [service])
    await host.start()

    await host.stop()

    assert host.nc is not None
    assert host.nc.is_closed
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("notes stopping did not finish" in w for w in warnings), warnings
    assert any("connections still in use" in w for w in warnings), warnings
    await pool.execute(f"drop schema {settings.schema_for('notes')} cascade")
