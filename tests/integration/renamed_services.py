"""The account and risk services with their commands under names of a test's own.

Command subjects (`account.*`, `risk.*`) carry no per-ledger prefix, so tests that share one
NATS server serve them under unique names; everything else is the real service's.
"""

from __future__ import annotations

from account_service.app import VERSION as ACCOUNT_VERSION
from account_service.app import AccountService
from account_service.commands import register_commands as register_account_commands
from ledger.commands import CommandService
from ledger.consumers import ConsumerOptions
from ledger.host import Runtime
from risk_service.account_view import account_consumer, ensure_table
from risk_service.api import default_limits, utc_now
from risk_service.app import RiskService
from risk_service.commands import register_commands as register_risk_commands


class RenamedAccount(AccountService):
    """The account service, its commands served as `<command_name>.*`."""

    def __init__(self, command_name: str) -> None:
        super().__init__()
        self.command_name = command_name

    async def start(self, runtime: Runtime) -> None:
        commands = CommandService(runtime.nc, runtime.store, name=self.command_name,
                                  version=ACCOUNT_VERSION)  # fmt: skip
        register_account_commands(commands, runtime.settings.assets())
        await commands.start()
        self._commands = commands


class RenamedRisk(RiskService):
    """The risk service, its commands served as `<command_name>.*`."""

    def __init__(self, command_name: str) -> None:
        super().__init__()
        self.command_name = command_name

    async def start(self, runtime: Runtime) -> None:
        store = runtime.store
        await ensure_table(store)
        consumer = account_consumer(runtime.nc, store,
                                    ConsumerOptions.from_settings(runtime.settings),
                                    durable_name=f"{store.schema}-accounts")  # fmt: skip
        await consumer.ensure()
        runtime.spawn(consumer.run, "account-view")
        self._consumer = consumer
        commands = CommandService(runtime.nc, store, name=self.command_name, version="0.1.0")
        register_risk_commands(commands, default_limits(runtime.settings), utc_now)
        await commands.start()
        self._commands = commands
