"""Background tasks of a runtime: restarted after a crash with growing pauses, ended by
cancellation or by returning."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from ledger import metrics
from ledger.host import Runtime, _cancel_tasks
from ledger.settings import Settings


def runtime(**overrides: Any) -> Runtime:
    settings = Settings(**{"task_restart_first_s": 0.01, "task_restart_max_s": 0.04, **overrides})
    return Runtime("svc", settings, None, None, None, None)  # type: ignore[arg-type]


def is_up_gauge(task_name: str) -> float | None:
    return metrics.REGISTRY.get_sample_value("ledger_background_task_up", {"task": task_name})


async def test_a_crashing_task_is_restarted_with_doubling_bounded_pauses(
    caplog: pytest.LogCaptureFixture,
) -> None:
    given = runtime()
    started_at: list[float] = []
    steady = asyncio.Event()

    async def work() -> None:
        started_at.append(asyncio.get_running_loop().time())
        if len(started_at) <= 4:
            raise RuntimeError(f"crash {len(started_at)}")
        steady.set()
        await asyncio.Event().wait()

    given.spawn(work, "worker")
    await asyncio.wait_for(steady.wait(), 5)

    pauses = [later - earlier for earlier, later in itertools.pairwise(started_at)]
    assert len(started_at) == 5
    assert pauses[0] >= 0.01
    assert pauses[1] >= 0.02
    assert pauses[3] >= 0.04
    assert pauses[3] < 0.5  # capped at task_restart_max_s, not 0.08
    assert given.task_health() == {"svc:worker": True}
    assert is_up_gauge("svc:worker") == 1.0
    assert caplog.text.count("background task svc:worker crashed") == 4
    await _cancel_tasks(given)


async def test_a_task_is_down_while_it_waits_to_restart() -> None:
    given = runtime(task_restart_first_s=10.0, task_restart_max_s=10.0)

    async def work() -> None:
        raise RuntimeError("down")

    given.spawn(work, "worker")
    await asyncio.sleep(0.01)

    assert given.task_health() == {"svc:worker": False}
    assert is_up_gauge("svc:worker") == 0.0
    await asyncio.wait_for(_cancel_tasks(given), 1)  # cancelling its pause ends it


async def test_cancellation_ends_a_running_task_cleanly() -> None:
    given = runtime()
    running = asyncio.Event()
    cancelled = asyncio.Event()

    async def work() -> None:
        running.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    given.spawn(work, "worker")
    await running.wait()
    await _cancel_tasks(given)

    assert cancelled.is_set()
    assert given.task_health() == {}
    assert is_up_gauge("svc:worker") == 0.0


async def test_a_task_that_returns_is_not_restarted() -> None:
    given = runtime()
    runs = 0

    async def work() -> None:
        nonlocal runs
        runs += 1

    given.spawn(work, "worker")
    await asyncio.sleep(0.05)

    assert runs == 1
    assert given.task_health() == {}
    await _cancel_tasks(given)
