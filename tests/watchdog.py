"""A stuck test ends the run with the stacks of every asyncio task, instead of hanging CI.

No test here should take minutes; one that does (setup, call and teardown together) is
stuck on an await that never ends. Past `LEDGER_TEST_STUCK_S` (default 600 s) the watchdog
prints every task's stack and every thread's to stderr, which names the await, and exits
the run with status 3. It is a diagnosis of a hang, not a timed assertion: a slow machine
only ever meets it if something waits for ever.
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

_STUCK_S = float(os.environ.get("LEDGER_TEST_STUCK_S", "600"))
_EXIT_STATUS = 3


def _print_tasks(loop: asyncio.AbstractEventLoop, done: threading.Event) -> None:
    for task in asyncio.all_tasks(loop):
        print(f"--- {task!r:.300}", file=sys.stderr)
        task.print_stack(limit=40, file=sys.stderr)
    done.set()


def _give_up(nodeid: str, loop: asyncio.AbstractEventLoop | None) -> None:
    try:
        if _capture is not None:  # the output must reach the terminal, not pytest's capture
            _capture.suspend_global_capture(in_=False)
        print(f"\n[watchdog] {nodeid} is stuck after {_STUCK_S:.0f} s; tasks:", file=sys.stderr)
        if loop is not None and loop.is_running():
            done = threading.Event()
            loop.call_soon_threadsafe(_print_tasks, loop, done)
            done.wait(timeout=10)
        print("[watchdog] threads:", file=sys.stderr)
        faulthandler.dump_traceback(file=sys.stderr)
        sys.stderr.flush()
    finally:  # whatever failed above (the loop closing meanwhile), the run ends
        os._exit(_EXIT_STATUS)


_capture: Any = None
"""pytest's capture manager, set when the plugin is configured."""
_session_loop: asyncio.AbstractEventLoop | None = None
"""The loop every async test and fixture runs on (pytest-asyncio, session scope)."""


def pytest_configure(config: pytest.Config) -> None:
    global _capture
    _capture = config.pluginmanager.getplugin("capturemanager")


@pytest.fixture(scope="session", autouse=True)
async def _watched_loop() -> None:
    global _session_loop
    _session_loop = asyncio.get_running_loop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    timer = threading.Timer(_STUCK_S, lambda: _give_up(item.nodeid, _session_loop))
    timer.daemon = True
    timer.start()
    try:
        return (yield)
    finally:
        timer.cancel()
