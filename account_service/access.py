"""The owner rule on the account routes, and the owners the account service tells others.

A token bound to an owner (docs/auth.md) reads only that owner's accounts: another's is a
404 exactly like an account that does not exist, so its existence does not leak. It writes
(deposits, withdrawals, freeze, close) only to that owner's accounts: any other account,
existing or not, is a 403, the same answer for both. Tokens without an owner pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated

from fastapi import Depends, Path

from account_service import queries
from account_service.errors import AccountNotFound
from account_service.views import ID_PATTERN
from eventstore import EventStore
from ledger.auth import CurrentPrincipal, require_acts_for
from ledger.dependencies import runtime_of
from ledger.host import Runtime

_Runtime = Annotated[Runtime, Depends(runtime_of("account"))]
_AccountIdPath = Annotated[str, Path(pattern=ID_PATTERN)]


async def readable_account(
    account_id: _AccountIdPath, runtime: _Runtime, principal: CurrentPrincipal
) -> str:
    """The path's account id, when the token may read that account; else AccountNotFound."""
    if principal.owner is not None:
        row = await queries.account_row(runtime.store, runtime.store.pool, account_id)
        if not principal.may_act_for(row["owner"]):
            raise AccountNotFound(account_id)
    return account_id


async def writable_account(
    account_id: _AccountIdPath, runtime: _Runtime, principal: CurrentPrincipal
) -> str:
    """The path's account id, when the token may change that account; else a 403 problem."""
    if principal.owner is not None:
        owners = await owners_of(runtime.store, [account_id])
        require_acts_for(principal, owners.get(account_id, ""), f"change account {account_id}")
    return account_id


ReadableAccountId = Annotated[str, Depends(readable_account)]
WritableAccountId = Annotated[str, Depends(writable_account)]


async def owners_of(store: EventStore, account_ids: Sequence[str]) -> Mapping[str, str]:
    """The owner of each of `account_ids` that exists (the `account.owners` answer)."""
    rows = await store.pool.fetch(
        f"select account_id, owner from {store.schema}.balances where account_id = any($1)",
        list(account_ids),
    )
    return {row["account_id"]: row["owner"] for row in rows}
