"""The saga orchestrator as the host runs it: its log's index, its HTTP routes, the
consumer that starts sagas from the trade service's events, and the worker that advances
them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from fastapi import APIRouter

from eventstore import Projection
from ledger.consumers import ConsumerOptions, DurableConsumer
from ledger.host import Runtime
from saga.api import router as api_router
from saga.clock import DatabaseClock
from saga.contracts import CATEGORY
from saga.definition import Participants
from saga.orchestrator import Orchestrator
from saga.runs import SagaRunsProjection

STARTING_SUBJECT = "ledger.trade.>"
"""Every event of the trade service (the NATS server may not take several filters); the
starter skips all but TransferRequested and TradeRequested."""


class SagaService:
    """Settles transfers and trades (DESIGN 2): `ledger serve saga`."""

    name = "saga"
    categories: tuple[str, ...] = (CATEGORY,)

    def __init__(
        self,
        participants: Participants | None = None,
        *,
        starting_subject: str = STARTING_SUBJECT,
        clock: Callable[[], datetime] | None = None,
        is_advancing: bool = True,
    ) -> None:
        """`is_advancing=False` runs no worker here (the starter and the API only); `clock`
        (tests) replaces the database's clock (`saga/clock.py`) for leases and deadlines."""
        self._participants = participants or Participants()
        self._starting_subject = starting_subject
        self._clock = clock
        self._is_advancing = is_advancing
        self._consumer: DurableConsumer | None = None
        self.orchestrator: Orchestrator | None = None

    def inline_projections(self) -> Sequence[Projection]:
        """`saga_runs`: each saga's status, when it is next due, and its lease."""
        return (SagaRunsProjection(),)

    def router(self) -> APIRouter:
        """The `/v1/sagas` routes."""
        return api_router

    async def start(self, runtime: Runtime) -> None:
        """Start sagas from the trade service's events, and advance due sagas."""
        assert self.orchestrator is None, "the saga service is started already"
        clock = self._clock
        if clock is None:
            database_clock = DatabaseClock(runtime.store.pool)
            await database_clock.synchronize()
            runtime.spawn(database_clock.run, "clock")
            clock = database_clock
        orchestrator = Orchestrator(
            runtime.store, runtime.nc, runtime.settings, participants=self._participants,
            clock=clock, notifier=runtime.notifier,
        )  # fmt: skip
        # One durable per saga schema: replicas share it; ledgers with their own schema
        # prefix on one NATS server each start their own sagas.
        consumer = DurableConsumer(
            runtime.nc, runtime.store, f"{runtime.store.schema}-starter", self._starting_subject,
            orchestrator.starter.start_one, ConsumerOptions.from_settings(runtime.settings),
            handle_all=orchestrator.starter.start_all,
        )  # fmt: skip
        await consumer.ensure()
        runtime.spawn(consumer.run, "starter")
        if self._is_advancing:
            runtime.spawn(orchestrator.run, "orchestrator")
        self._consumer = consumer
        self.orchestrator = orchestrator

    async def stop(self) -> None:
        """Stop consuming; the runtime cancels the worker (a saga mid-step resumes later,
        on any instance, from its log)."""
        if self._consumer is not None:
            self._consumer.stop()
            self._consumer = None
        self.orchestrator = None
