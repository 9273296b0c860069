"""Many writers at once: one winner per version, and readers that never miss a late commit."""

from __future__ import annotations

import asyncio
import random

from eventstore import NO_STREAM, ConcurrencyError, EventStore, NewEvent, Position

WRITERS = 16
APPENDS_PER_WRITER = 10


async def test_concurrent_writers_to_one_stream_get_one_winner_per_version(
    store: EventStore,
) -> None:
    await store.append("account-hot", [NewEvent("AccountOpened", {})], NO_STREAM)
    won_versions: list[int] = []
    conflicts = 0

    async def writer(number: int) -> None:
        nonlocal conflicts
        for attempt in range(APPENDS_PER_WRITER):
            while True:
                version = await store.stream_version("account-hot")
                event = NewEvent("Deposited", {"writer": number, "attempt": attempt})
                try:
                    result = await store.append("account-hot", [event], version)
                except ConcurrencyError:
                    conflicts += 1
                    continue
                won_versions.append(result.version)
                break

    await asyncio.gather(*(writer(number) for number in range(WRITERS)))

    total = WRITERS * APPENDS_PER_WRITER
    events = await store.read_stream("account-hot")
    assert sorted(won_versions) == list(range(2, total + 2))
    assert [event.stream_version for event in events] == list(range(1, total + 2))
    assert await store.stream_version("account-hot") == total + 1
    assert conflicts > 0, "the writers should have raced"


async def test_concurrent_creators_of_one_stream_leave_one_winner(store: EventStore) -> None:
    async def create(number: int) -> bool:
        try:
            await store.append("account-new", [NewEvent("AccountOpened", {"n": number})], NO_STREAM)
        except ConcurrencyError:
            return False
        return True

    outcomes = await asyncio.gather(*(create(number) for number in range(WRITERS)))

    assert outcomes.count(True) == 1
    assert await store.stream_version("account-new") == 1


async def test_read_all_follower_sees_late_commits_exactly_once_in_a_stable_order(
    store: EventStore,
) -> None:
    """Writers hold their transactions open for random times, so commits land out of order."""
    rng = random.Random(7)
    transactions = 60
    seen: list[tuple[str, int]] = []
    done = asyncio.Event()

    async def writer(number: int) -> None:
        await asyncio.sleep(rng.random() * 0.3)
        async with store.unit_of_work() as unit:
            await unit.append(f"stream-{number}", [NewEvent("Happened", {"n": number})], NO_STREAM)
            await asyncio.sleep(rng.random() * (0.5 if number % 5 == 0 else 0.02))
            await unit.append(f"other-{number}", [NewEvent("Happened", {"n": number})], NO_STREAM)

    async def follower() -> None:
        position = Position(0, 0)
        while True:
            batch = await store.read_all(position, limit=7)
            seen.extend((event.stream_id, event.stream_version) for event in batch)
            if batch:
                position = batch[-1].position
            elif done.is_set() and len(seen) >= 2 * transactions:
                return
            else:
                await asyncio.sleep(0.005)

    reading = asyncio.create_task(follower())
    await asyncio.gather(*(writer(number) for number in range(transactions)))
    done.set()
    await asyncio.wait_for(reading, timeout=30)

    replay = [(event.stream_id, event.stream_version) for event in await store.read_all()]
    assert len(seen) == len(set(seen)) == 2 * transactions
    assert seen == replay
