"""Starting the host in the app's lifespan, given up when the process is asked to stop.

uvicorn takes SIGTERM and SIGINT during the app's startup, but only to shut down after it,
and a start may wait on a server for a long time: the first NATS connection waits until a
server answers, by design (compose may start a service before NATS). `ledger serve` with
NATS unreachable therefore ignored SIGTERM and Ctrl-C, twice, for as long as it ran (found
in review); only SIGKILL ended it. Here the signal also cancels the start: the host undoes
what it began, the startup ends, and uvicorn, told to exit, shuts down at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from types import FrameType

from ledger.host import ServiceHost

_log = logging.getLogger(__name__)
_STOPPING_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def start_unless_stopped(host: ServiceHost) -> bool:
    """Start `host`; False when SIGTERM or SIGINT came first (the host is stopped again).

    The signal still reaches the handler that was installed (uvicorn's), which tells the
    server to exit after the startup."""
    if threading.current_thread() is not threading.main_thread():
        await host.start()  # signals go to the main thread only: nothing to watch here
        return True
    loop = asyncio.get_running_loop()
    starting = asyncio.ensure_future(host.start())
    handlers = {sig: signal.getsignal(sig) for sig in _STOPPING_SIGNALS}
    stopped_by: list[int] = []

    def give_up(sig: int, frame: FrameType | None) -> None:
        stopped_by.append(sig)
        loop.call_soon_threadsafe(starting.cancel)
        handler = handlers[signal.Signals(sig)]
        if callable(handler):
            handler(sig, frame)

    for sig in _STOPPING_SIGNALS:
        signal.signal(sig, give_up)
    try:
        await starting
    except asyncio.CancelledError:
        if not stopped_by or not starting.cancelled():
            raise  # the lifespan itself was cancelled
        _log.warning("stopped while starting (%s): nothing was started",
                     signal.Signals(stopped_by[0]).name)  # fmt: skip
        return False
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return True
