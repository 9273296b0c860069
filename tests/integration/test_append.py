"""append: expected versions, idempotent retries, validation, units of work, stream reads."""

from __future__ import annotations

import uuid

import pytest

from eventstore import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    Append,
    ConcurrencyError,
    Direction,
    DuplicateEventError,
    EventStore,
    InvalidEvent,
    NewEvent,
    StreamNotFound,
)


def opened(owner: str = "alice") -> NewEvent:
    return NewEvent("AccountOpened", {"owner": owner, "currency": "USD"})


def deposited(amount_minor: int) -> NewEvent:
    return NewEvent("Deposited", {"amount_minor": amount_minor})


async def test_append_to_a_new_stream_starts_at_version_one(store: EventStore) -> None:
    result = await store.append("account-1", [opened(), deposited(5)], NO_STREAM)

    assert result.version == 2
    assert [event.stream_version for event in result.events] == [1, 2]
    assert not result.is_duplicate
    assert await store.stream_version("account-1") == 2


async def test_exact_expected_version_must_match(store: EventStore) -> None:
    await store.append("account-1", [opened()], NO_STREAM)
    await store.append("account-1", [deposited(1)], 1)

    with pytest.raises(ConcurrencyError) as raised:
        await store.append("account-1", [deposited(2)], 1)

    assert raised.value.actual_version == 2
    assert raised.value.expected_version == 1
    assert await store.stream_version("account-1") == 2


async def test_no_stream_refuses_an_existing_stream(store: EventStore) -> None:
    await store.append("account-1", [opened()], NO_STREAM)

    with pytest.raises(ConcurrencyError):
        await store.append("account-1", [opened()], NO_STREAM)


async def test_stream_exists_refuses_a_missing_stream(store: EventStore) -> None:
    with pytest.raises(ConcurrencyError) as raised:
        await store.append("account-1", [deposited(1)], STREAM_EXISTS)
    assert raised.value.actual_version == 0

    await store.append("account-1", [opened()], NO_STREAM)
    result = await store.append("account-1", [deposited(1)], STREAM_EXISTS)
    assert result.version == 2


async def test_exact_version_refuses_a_missing_stream(store: EventStore) -> None:
    with pytest.raises(ConcurrencyError):
        await store.append("account-1", [deposited(1)], 3)
    with pytest.raises(StreamNotFound):
        await store.read_stream("account-1")


async def test_a_stream_committed_between_the_read_and_its_existence_check_is_read(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by the long system profile: a saga's log read as its first events committed
    # came back empty (the events query saw no stream, the existence check then did), and
    # `GET /v1/sagas/{id}` folded nothing into a 500.
    check_existence = store.stream_version

    async def committed_meanwhile(stream_id: str) -> int:
        await store.append(stream_id, [opened()], NO_STREAM)  # another writer, just then
        return await check_existence(stream_id)

    monkeypatch.setattr(store, "stream_version", committed_meanwhile)
    events = await store.read_stream("account-1")

    assert [event.event_type for event in events] == ["AccountOpened"]


async def test_any_appends_whatever_the_version(store: EventStore) -> None:
    await store.append("account-1", [opened()], ANY)
    result = await store.append("account-1", [deposited(1)], ANY)

    assert result.version == 2


async def test_repeating_an_append_returns_the_first_result(store: EventStore) -> None:
    events = [opened(), deposited(7)]
    first = await store.append("account-1", events, NO_STREAM)

    again = await store.append("account-1", events, NO_STREAM)

    assert again.is_duplicate
    assert again.version == first.version
    assert [e.event_id for e in again.events] == [e.event_id for e in first.events]
    assert [e.hash for e in again.events] == [e.hash for e in first.events]
    assert await store.stream_version("account-1") == 2


async def test_repeating_an_append_at_the_version_it_made_returns_the_first_result(
    store: EventStore,
) -> None:
    # A retry that read the stream's version again, its first try having committed unseen.
    events = [opened(), deposited(7)]
    first = await store.append("account-1", events, NO_STREAM)

    again = await store.append("account-1", events, first.version)

    assert again.is_duplicate
    assert again.events == first.events
    assert await store.stream_version("account-1") == 2


async def test_repeating_part_of_an_append_is_refused(store: EventStore) -> None:
    first = opened()
    await store.append("account-1", [first], NO_STREAM)

    with pytest.raises(DuplicateEventError):
        await store.append("account-1", [first, deposited(1)], ANY)
    assert await store.stream_version("account-1") == 1


async def test_an_event_id_cannot_move_to_another_stream(store: EventStore) -> None:
    event = opened()
    await store.append("account-1", [event], NO_STREAM)

    with pytest.raises(DuplicateEventError):
        await store.append("account-2", [event], NO_STREAM)
    assert await store.stream_version("account-2") == 0


@pytest.mark.parametrize(
    ("stream_id", "events", "expected_version"),
    [
        ("account-1", [NewEvent("Deposited", {"amount": 1.5})], ANY),
        ("account-1", [NewEvent("not a type", {})], ANY),
        ("account-1", [], ANY),
        ("", [opened()], ANY),
        ("account 1", [opened()], ANY),
        ("account-1", [opened()], -3),
        ("account-1", [NewEvent("Deposited", {"note": "nul\x00"})], ANY),
        ("account-1", [NewEvent("Deposited", ["ab", "cd"])], ANY),  # type: ignore[arg-type]
        ("account-1", [NewEvent("Deposited", {}, ["ab"])], ANY),  # type: ignore[arg-type]
        ("account-1", [NewEvent("Deposited", {}, {"schema_version": "2"})], ANY),
        ("account-1", [NewEvent("Deposited", {}, {"schema_version": True})], ANY),
        ("account-1", [NewEvent("Deposited", {}, {"schema_version": 0})], ANY),
    ],
)
async def test_malformed_appends_are_refused_and_write_nothing(
    store: EventStore, stream_id: str, events: list[NewEvent], expected_version: int
) -> None:
    with pytest.raises(InvalidEvent):
        await store.append(stream_id, events, expected_version)
    assert await store.read_all() == []


async def test_the_same_event_id_twice_in_one_append_is_refused(store: EventStore) -> None:
    event_id = uuid.uuid4()
    twice = [NewEvent("Deposited", {}, event_id=event_id) for _ in range(2)]
    with pytest.raises(InvalidEvent):
        await store.append("account-1", twice, ANY)


async def test_a_unit_of_work_appends_several_streams_at_once(store: EventStore) -> None:
    async with store.unit_of_work() as unit:
        await unit.append("account-1", [opened("a")], NO_STREAM)
        await unit.append("account-2", [opened("b")], NO_STREAM)

    assert await store.stream_version("account-1") == 1
    assert await store.stream_version("account-2") == 1
    assert len({event.tx_id for event in await store.read_all()}) == 1


async def test_a_failed_unit_of_work_appends_nothing(store: EventStore) -> None:
    await store.append("account-2", [opened("b")], NO_STREAM)

    with pytest.raises(ConcurrencyError):
        async with store.unit_of_work() as unit:
            await unit.append("account-1", [opened("a")], NO_STREAM)
            await unit.append("account-2", [opened("b")], NO_STREAM)

    assert await store.stream_version("account-1") == 0
    assert await store.stream_version("account-2") == 1


async def test_append_many_appends_each_stream_as_its_own_append_would(
    store: EventStore,
) -> None:
    await store.append("account-2", [opened("b")], NO_STREAM)
    retried = [deposited(7)]
    first = await store.append("account-3", retried, ANY)

    async with store.unit_of_work() as unit:
        results = await unit.append_many([
            Append("account-1", [opened("a"), deposited(1)], NO_STREAM),
            Append("account-2", [deposited(2)], 1),
            Append("account-3", retried, ANY),  # a retry: the first append's result
            Append("account-1", [deposited(3)], 2),  # the same stream again, after the first
        ])  # fmt: skip

    assert [(r.stream_id, r.version, r.is_duplicate) for r in results] == [
        ("account-1", 2, False), ("account-2", 2, False), ("account-3", 1, True),
        ("account-1", 3, False),
    ]  # fmt: skip
    assert results[2].events == first.events
    assert [e.data for e in results[0].events] == [{"owner": "a", "currency": "USD"},
                                                   {"amount_minor": 1}]  # fmt: skip
    stored = await store.read_stream("account-1")
    assert [(e.event_id, e.hash) for e in stored] == [
        (e.event_id, e.hash) for e in (*results[0].events, *results[3].events)
    ]
    assert len({e.tx_id for r in (results[0], results[1], results[3]) for e in r.events}) == 1


async def test_append_many_names_the_stream_that_met_another_writer(store: EventStore) -> None:
    await store.append("account-2", [opened("b")], NO_STREAM)

    with pytest.raises(ConcurrencyError) as raised:
        async with store.unit_of_work() as unit:
            await unit.append_many([
                Append("account-1", [opened("a")], NO_STREAM),
                Append("account-2", [opened("b")], NO_STREAM),
            ])  # fmt: skip

    assert (raised.value.stream_id, raised.value.expected_version) == ("account-2", NO_STREAM)
    assert raised.value.actual_version == 1
    assert await store.stream_version("account-1") == 0

    with pytest.raises(ConcurrencyError) as raised:
        async with store.unit_of_work() as unit:
            await unit.append_many([
                Append("account-2", [deposited(1)], 1), Append("account-2", [deposited(2)], 1),
            ])  # fmt: skip
    assert (raised.value.stream_id, raised.value.expected_version) == ("account-2", 1)
    assert raised.value.actual_version == 2

    with pytest.raises(ConcurrencyError) as raised:
        async with store.unit_of_work() as unit:
            await unit.append_many([Append("account-9", [opened()], STREAM_EXISTS)])
    assert (raised.value.stream_id, raised.value.expected_version) == ("account-9", STREAM_EXISTS)


async def test_append_many_checks_every_append_before_it_writes(store: EventStore) -> None:
    async with store.unit_of_work() as unit:
        with pytest.raises(InvalidEvent):
            await unit.append_many([
                Append("account-1", [opened("a")], NO_STREAM), Append("account 2", [opened()]),
            ])  # fmt: skip

    assert await store.stream_version("account-1") == 0


async def test_read_stream_walks_forward_and_backward(store: EventStore) -> None:
    await store.append("account-1", [opened(), *(deposited(n) for n in range(1, 6))], NO_STREAM)

    forward = await store.read_stream("account-1", from_version=3, limit=2)
    backward = await store.read_stream("account-1", direction=Direction.BACKWARD, limit=3)
    backward_from = await store.read_stream(
        "account-1", from_version=2, direction=Direction.BACKWARD
    )

    assert [e.stream_version for e in forward] == [3, 4]
    assert [e.stream_version for e in backward] == [6, 5, 4]
    assert [e.stream_version for e in backward_from] == [2, 1]
    assert forward[0].data == {"amount_minor": 2}


async def test_read_stream_of_an_unknown_stream_raises(store: EventStore) -> None:
    with pytest.raises(StreamNotFound):
        await store.read_stream("account-404")


async def test_read_stream_past_the_end_is_empty(store: EventStore) -> None:
    await store.append("account-1", [opened()], NO_STREAM)

    assert await store.read_stream("account-1", from_version=5) == []


async def test_read_category_returns_only_that_category(store: EventStore) -> None:
    await store.append("account-1", [opened()], NO_STREAM)
    await store.append("transfer-1", [NewEvent("TransferRequested", {})], NO_STREAM)
    await store.append("account-2", [opened()], NO_STREAM)

    accounts = await store.read_category("account")

    assert [e.stream_id for e in accounts] == ["account-1", "account-2"]
    assert [e.stream_id for e in await store.read_category("transfer")] == ["transfer-1"]


async def test_read_all_resumes_after_a_position(store: EventStore) -> None:
    await store.append("account-1", [opened(), deposited(1)], NO_STREAM)
    first_page = await store.read_all(limit=1)
    await store.append("account-2", [opened()], NO_STREAM)

    rest = await store.read_all(first_page[-1].position)

    assert [(e.stream_id, e.stream_version) for e in rest] == [("account-1", 2), ("account-2", 1)]


async def test_metadata_is_stored_and_read_back(store: EventStore) -> None:
    metadata = {"correlation_id": str(uuid.uuid4()), "actor": "alice", "schema_version": 1}
    await store.append("account-1", [NewEvent("AccountOpened", {}, metadata)], NO_STREAM)

    [event] = await store.read_stream("account-1")

    assert event.metadata == metadata
