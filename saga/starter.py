"""Starting sagas from the trade service's requests, each exactly once.

The saga id is the transfer id, and a saga's stream must not exist when it starts, so a
request delivered again starts nothing. The starter consumer hands a fetched batch to
`start_all`: every request's SagaStarted in one round trip (`append_many`), their
`saga_runs` rows in one statement. A saga that exists already (started outside this
consumer's inbox, which takes care of redeliveries) fails that batch; the consumer rolls it
back and hands its messages one by one to `start_one`, which skips the saga that exists
(docs/saga-starter-batches.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Final

from eventstore import NO_STREAM, Append, ConcurrencyError, EventStore, UnitOfWork
from eventstore._db import Connection
from ledger import context
from ledger.consumers import ConsumedEvent
from saga import log
from saga.contracts import SagaKind, SagaStarted, stream_of
from trade_service.contracts import TradeRequested, TransferRequested

_log = logging.getLogger(__name__)
Request = TransferRequested | TradeRequested
_STARTING_EVENTS: Final[dict[str, type[TransferRequested] | type[TradeRequested]]] = {
    "TransferRequested": TransferRequested,
    "TradeRequested": TradeRequested,
}


class SagaStarter:
    """Starts the saga of each transfer and trade request it is given."""

    def __init__(
        self, store: EventStore, deadline_s: float, clock: Callable[[], datetime]
    ) -> None:
        self._store = store
        self._deadline_s = deadline_s
        self._clock = clock

    async def start(self, request: Request) -> bool:
        """Start the saga of `request` in its own transaction; False if it exists already."""
        async with self._store.unit_of_work() as unit:
            return await start_saga(unit, request, self._deadline_at())

    async def start_one(self, connection: Connection, event: ConsumedEvent) -> None:
        """The starter consumer's handler: start a saga for a transfer or trade request, in
        the consumer's transaction (the context of the message is bound); other events of
        the trade service are skipped."""
        request = _request_of(event)
        if request is None:
            return
        is_new = await start_saga(UnitOfWork(self._store, connection), request,
                                  self._deadline_at())  # fmt: skip
        if is_new:
            self._announce()
        _log.info("saga %s %s", request.transfer_id, "started" if is_new else "exists already")

    async def start_all(self, connection: Connection, events: Sequence[ConsumedEvent]) -> None:
        """The starter consumer's batch handler: `start_one` for each event, with one append
        for them all. Raises ConcurrencyError, failing the batch, when a saga exists."""
        deadline_at = self._deadline_at()
        started: dict[str, tuple[context.RequestContext, Append]] = {}
        for event in events:
            request = _request_of(event)
            if request is not None:
                handling = context.from_metadata(event.metadata, event.event_id)
                started[request.transfer_id] = (
                    handling, _started(request, deadline_at, handling.as_metadata())
                )
        if not started:
            return
        await UnitOfWork(self._store, connection).append_many(
            [append for _, append in started.values()]
        )
        self._announce()
        for saga_id, (handling, _) in started.items():
            with context.bound(handling):
                _log.info("saga %s started", saga_id)

    def _deadline_at(self) -> datetime:
        return self._clock() + timedelta(seconds=self._deadline_s)

    def _announce(self) -> None:
        # The NOTIFY goes out a little later (coalesced), normally after the consumer's
        # commit; if it comes first, the saga waits for the next wake or poll.
        self._store.announcer.announce(is_committed=False)


async def start_saga(unit: UnitOfWork, request: Request, deadline_at: datetime) -> bool:
    """Append the SagaStarted of `request` in `unit`; False (and no change) when the saga
    was started before: the saga id is the transfer id, and its stream must not exist."""
    append = _started(request, deadline_at, context.current().as_metadata())
    try:
        # A savepoint: a refused append must not abort the caller's transaction.
        async with unit.connection.transaction():
            await unit.append(append.stream_id, append.events, append.expected_version)
    except ConcurrencyError:
        return False
    return True


def _request_of(event: ConsumedEvent) -> Request | None:
    """The transfer or trade request an event of the trade service is, if it is one."""
    model = _STARTING_EVENTS.get(event.event_type)
    return None if model is None else model.model_validate(event.data)


def _started(request: Request, deadline_at: datetime, metadata: dict[str, Any]) -> Append:
    """The append that starts the saga of `request`: its stream must not exist yet."""
    kind: SagaKind = "trade" if isinstance(request, TradeRequested) else "transfer"
    started = SagaStarted(saga_id=request.transfer_id, kind=kind, legs=request.legs,
                          deadline_at=deadline_at)  # fmt: skip
    return Append(stream_of(request.transfer_id), log.new_events((started,), metadata),
                  NO_STREAM)  # fmt: skip
