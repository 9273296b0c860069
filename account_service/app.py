"""The account service as the host runs it: its read models, its HTTP routes, and its saga
commands over NATS."""

from __future__ import annotations

import functools
from collections.abc import Sequence

from fastapi import APIRouter

from account_service.access import owners_of
from account_service.api import router as api_router
from account_service.commands import register_commands
from account_service.events import CATEGORY
from account_service.holds import HoldsProjection
from account_service.projections import BalancesProjection, EntriesProjection
from eventstore import Projection
from ledger.auth import OwnersServer, owners_subject
from ledger.commands import CommandService
from ledger.host import Runtime

VERSION = "0.1.0"


class AccountService:
    """Accounts and their money (DESIGN 1): `ledger serve account`."""

    name = "account"
    categories: tuple[str, ...] = (CATEGORY,)

    def __init__(self) -> None:
        self._commands: CommandService | None = None
        self._owners: OwnersServer | None = None

    def inline_projections(self) -> Sequence[Projection]:
        """Balances (the accounts' folded state), entries (their history) and holds (how
        each hold stands), all written in the append's transaction, so reads after a write
        see it."""
        return (BalancesProjection(), EntriesProjection(), HoldsProjection())

    def router(self) -> APIRouter:
        """The `/v1/accounts` routes."""
        return api_router

    async def start(self, runtime: Runtime) -> None:
        """Serve the saga's commands (`account.*`) and the owners of accounts (for the owner
        rule of other services, ledger.auth.owners) on NATS."""
        assert self._commands is None, "the account service is started already"
        commands = CommandService(runtime.nc, runtime.store, name=self.name, version=VERSION)
        register_commands(commands, runtime.settings.assets())
        await commands.start()
        self._commands = commands
        owners = OwnersServer(runtime.nc, owners_subject(runtime.settings),
                              functools.partial(owners_of, runtime.store))  # fmt: skip
        await owners.start()
        self._owners = owners

    async def stop(self) -> None:
        """Stop taking commands and questions; those in progress finish first."""
        if self._owners is not None:
            await self._owners.stop()
            self._owners = None
        if self._commands is not None:
            await self._commands.stop()
            self._commands = None
