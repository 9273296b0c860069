"""The trade service as the host runs it: its read model, its HTTP routes, the saga's
commands over NATS, and the consumer that records the saga's steps."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter

from eventstore import Projection
from eventstore.notifier import Notifier
from ledger.commands import CommandService
from ledger.consumers import ConsumerOptions, DurableConsumer
from ledger.host import Runtime
from trade_service.api import SERVICE
from trade_service.api import router as api_router
from trade_service.commands import register_commands
from trade_service.events import CATEGORIES
from trade_service.projections import SettlementsProjection
from trade_service.steps import ensure_table, steps_consumer
from trade_service.waiting import SettlementWatch

VERSION = "0.1.0"


class TradeService:
    """Transfers and trades as the customer sees them (DESIGN 1): `ledger serve trade`.

    `command_name` is the NATS service name of its commands (`<name>.complete`, ...); only
    tests that share one NATS server change it, so that their requests reach their own
    instance.
    """

    name = SERVICE
    categories: tuple[str, ...] = CATEGORIES

    def __init__(self, *, command_name: str = SERVICE) -> None:
        self.command_name = command_name
        self._commands: CommandService | None = None
        self._consumer: DurableConsumer | None = None
        self._notifier: Notifier | None = None

    def inline_projections(self) -> Sequence[Projection]:
        """`settlements`, written in the append's transaction, so reads after a write see it."""
        return (SettlementsProjection(),)

    def router(self) -> APIRouter:
        """The `/v1/transfers` and `/v1/trades` routes."""
        return api_router

    async def start(self, runtime: Runtime) -> None:
        """Record the saga's steps from its events, and serve the saga's commands
        (`trade.complete`, `trade.reject`, `trade.fail`) on NATS."""
        assert self._commands is None, "the trade service is started already"
        store = runtime.store
        await ensure_table(store)
        # One durable per trade schema: replicas of one ledger share it, while ledgers with
        # their own schema prefix on one NATS server (tests) keep their own. Unprefixed, the
        # name is `trade-steps`.
        consumer = steps_consumer(
            runtime.nc, store, ConsumerOptions.from_settings(runtime.settings),
            durable_name=f"{store.schema}-steps",
        )
        await consumer.ensure()
        runtime.spawn(consumer.run, "saga-steps")
        self._consumer = consumer
        commands = CommandService(runtime.nc, store, name=self.command_name, version=VERSION)
        register_commands(commands)
        await commands.start()
        self._commands = commands
        self._notifier = runtime.notifier

    async def stop(self) -> None:
        """Stop taking commands (those in progress finish first) and consuming."""
        if self._consumer is not None:
            self._consumer.stop()
            self._consumer = None
        if self._commands is not None:
            await self._commands.stop()
            self._commands = None
        if self._notifier is not None:
            await SettlementWatch.close_for(self._notifier)
            self._notifier = None
