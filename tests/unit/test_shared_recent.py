"""SharedRecent: one fetch for the callers that ask while it runs, reused while it is recent."""

from __future__ import annotations

import asyncio

import pytest

from ledger.shared_recent import SharedRecent


class Counting:
    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()

    async def fetch(self) -> int:
        self.calls += 1
        await self.release.wait()
        return self.calls


async def test_callers_during_a_fetch_share_it() -> None:
    counting = Counting()
    shared = SharedRecent(counting.fetch, max_age_s=10.0)

    waiting = [asyncio.create_task(shared.get()) for _ in range(50)]
    await asyncio.sleep(0)
    counting.release.set()

    assert await asyncio.gather(*waiting) == [1] * 50
    assert counting.calls == 1


async def test_a_recent_result_answers_and_an_old_one_is_fetched_again() -> None:
    now = [0.0]
    counting = Counting()
    counting.release.set()
    shared = SharedRecent(counting.fetch, max_age_s=1.0, clock=lambda: now[0])

    first = await shared.get()
    now[0] = 0.9
    recent = await shared.get()
    now[0] = 1.5
    fresh = await shared.get()

    assert (first, recent, fresh) == (1, 1, 2)


async def test_a_caller_that_gives_up_does_not_cancel_the_others_fetch() -> None:
    counting = Counting()
    shared = SharedRecent(counting.fetch, max_age_s=10.0)
    impatient = asyncio.create_task(shared.get())
    patient = asyncio.create_task(shared.get())
    await asyncio.sleep(0)

    impatient.cancel()
    counting.release.set()

    with pytest.raises(asyncio.CancelledError):
        await impatient
    assert await patient == 1
