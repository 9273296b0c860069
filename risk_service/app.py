"""The risk service as the host runs it: its read models, its HTTP routes, its saga commands
over NATS, and the consumer that keeps its view of the accounts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from fastapi import APIRouter

from eventstore import Projection
from ledger.commands import CommandService
from ledger.consumers import ConsumerOptions, DurableConsumer
from ledger.host import Runtime
from risk_service.account_view import ViewProgress, account_consumer, ensure_table
from risk_service.api import default_limits, utc_now
from risk_service.api import router as api_router
from risk_service.commands import register_commands
from risk_service.events import CATEGORY
from risk_service.projections import inline_projections

VERSION = "0.1.0"


class RiskService:
    """Risk limits, exposure and decisions per account (DESIGN 1): `ledger serve risk`."""

    name = "risk"
    categories: tuple[str, ...] = (CATEGORY,)

    def __init__(self, clock: Callable[[], datetime] = utc_now) -> None:
        self._clock = clock
        self._commands: CommandService | None = None
        self._consumer: DurableConsumer | None = None

    def inline_projections(self) -> Sequence[Projection]:
        """Each account's folded risk state, every decision, and the exposures cancelled
        before they were assessed, all written in the append's transaction, so reads after
        a write see them."""
        return inline_projections()

    def router(self) -> APIRouter:
        """The `/v1/risk` routes."""
        return api_router

    async def start(self, runtime: Runtime) -> None:
        """Follow the account events into `risk_accounts`, and serve the saga's commands
        (`risk.*`) on NATS."""
        assert self._commands is None, "the risk service is started already"
        store = runtime.store
        await ensure_table(store)
        # One durable consumer per risk schema: every replica of one ledger shares it (each
        # message is applied once, to the one table), while ledgers with their own schema
        # prefix on one NATS server (tests) each keep their own view. Unprefixed, the name
        # is `risk-accounts`.
        consumer = account_consumer(
            runtime.nc, store, ConsumerOptions.from_settings(runtime.settings),
            durable_name=f"{store.schema}-accounts",
        )
        await consumer.ensure()
        runtime.spawn(consumer.run, "account-view")
        self._consumer = consumer
        commands = CommandService(runtime.nc, store, name=self.name, version=VERSION)
        register_commands(
            commands, default_limits(runtime.settings), self._clock,
            # The account relay publishes within its poll interval of a commit.
            ViewProgress(consumer, runtime.settings.subscription_poll_interval_s),
        )
        await commands.start()
        self._commands = commands

    async def stop(self) -> None:
        """Stop taking commands (those in progress finish first) and consuming."""
        if self._consumer is not None:
            self._consumer.stop()
            self._consumer = None
        if self._commands is not None:
            await self._commands.stop()
            self._commands = None
