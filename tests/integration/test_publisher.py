"""`BatchPublisher` against a real JetStream: a batch returns once every message is stored,
and any refusal or silence is an error, never a batch that only looks published."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client
from nats.js.errors import APIError, NoStreamResponseError

from ledger.publisher import BatchPublisher, Outgoing
from ledger.relay import MSG_ID_HEADER


@pytest.fixture
async def stream(nc: Client) -> AsyncIterator[str]:
    """A stream of this test alone, on subjects `<name>.>`."""
    name = f"PUB{uuid.uuid4().hex[:10].upper()}"
    js = nc.jetstream()
    await js.add_stream(name=name, subjects=[f"{name}.>"], duplicate_window=60)
    yield name
    await js.delete_stream(name)


def message(subject: str, number: int, msg_id: str | None = None) -> Outgoing:
    return Outgoing(subject, b"%d" % number, {MSG_ID_HEADER: msg_id or str(uuid.uuid4())})


async def test_a_batch_is_stored_in_order_with_its_headers(nc: Client, stream: str) -> None:
    async with BatchPublisher(nc, stream) as publisher:
        await publisher.publish([message(f"{stream}.a", n) for n in range(50)], timeout_s=10)
        await publisher.publish([message(f"{stream}.b", n) for n in range(50, 60)], timeout_s=10)

    js = nc.jetstream()
    assert (await js.stream_info(stream)).state.messages == 60
    first, last = await js.get_msg(stream, 1), await js.get_msg(stream, 60)
    assert (first.data, last.data) == (b"0", b"59")
    assert first.headers is not None
    assert MSG_ID_HEADER in first.headers


async def test_a_message_id_seen_before_is_acknowledged_and_not_stored_twice(
    nc: Client, stream: str
) -> None:
    async with BatchPublisher(nc, stream) as publisher:
        await publisher.publish([message(f"{stream}.a", 1, "same-id")], timeout_s=10)
        await publisher.publish([message(f"{stream}.a", 1, "same-id")], timeout_s=10)

    assert (await nc.jetstream().stream_info(stream)).state.messages == 1


async def test_a_subject_no_stream_takes_is_an_error(nc: Client, stream: str) -> None:
    async with BatchPublisher(nc, stream) as publisher:
        with pytest.raises(NoStreamResponseError):
            await publisher.publish([message(f"nowhere{uuid.uuid4().hex}.x", 1)], timeout_s=10)


async def test_a_subject_of_another_stream_is_refused(nc: Client, stream: str) -> None:
    js = nc.jetstream()
    other = f"{stream}X"
    await js.add_stream(name=other, subjects=[f"{other}.>"])
    try:
        async with BatchPublisher(nc, stream) as publisher:
            batch = [message(f"{stream}.a", 1), message(f"{other}.a", 2)]
            with pytest.raises(APIError, match="expected stream"):
                await publisher.publish(batch, timeout_s=10)
    finally:
        await js.delete_stream(other)


async def test_a_batch_nobody_acknowledges_times_out(nc: Client, stream: str) -> None:
    # A plain subscriber answers nothing: no stream stores it, and no 503 comes back either.
    silent = await nc.subscribe(f"silent{uuid.uuid4().hex}.>")
    try:
        async with BatchPublisher(nc, stream) as publisher:
            with pytest.raises(TimeoutError):
                await publisher.publish([message(f"{silent.subject[:-2]}.x", 1)], timeout_s=0.3)
            # The publisher still works after giving up on a batch.
            await publisher.publish([message(f"{stream}.a", 1)], timeout_s=10)
    finally:
        await silent.unsubscribe()
