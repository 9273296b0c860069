"""The owner rule on the transfer and trade routes (docs/auth.md).

A token bound to an owner moves money only out of that owner's accounts: a transfer from,
or a trade paying out of (the buyer's cash account, the seller's asset account), any other
account is a 403, whether that account exists or not. It reads only the transfers and trades
that involve one of its owner's accounts: any other is a 404 exactly like one that does not
exist, checked before a `?wait` so that waiting tells nothing either. It lists by one of its
own accounts (`?account=`). Why a settlement was refused, in free text (its `detail` and its
steps'), is the payers' business: their limits, their outflow, the note risk blocked them
with. A token bound to an owner reads it only when that owner pays every leg; others see the
status and the `reason` code. Nor does such a token read which operator retried a parked
saga (a step's detail). The trade service does not know owners: it asks the account
service (`ledger.auth.owners`). Tokens without an owner pass without asking.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Path

from ledger.auth import CurrentPrincipal, OwnersUnavailable, Principal, ask_owners
from ledger.dependencies import runtime_of
from ledger.host import Runtime
from ledger.problems import Problem
from trade_service import queries
from trade_service.domain import SettlementKind, SettlementNotFound
from trade_service.views import (
    ID_PATTERN,
    SettlementView,
    legs_of,
    without_details,
    without_operators,
)

_Runtime = Annotated[Runtime, Depends(runtime_of("trade"))]
_IdPath = Annotated[str, Path(pattern=ID_PATTERN)]


async def require_payers(
    runtime: Runtime, principal: Principal, account_ids: Sequence[str]
) -> None:
    """Raise a 403 problem unless the token may move money out of every one of
    `account_ids`."""
    if principal.owner is None:
        return
    owners = await _owners(runtime, account_ids)
    for account_id in account_ids:
        if owners.get(account_id) != principal.owner:
            raise Problem(403, f"the token acts for owner {principal.owner}: it may not move"
                          f" money out of account {account_id}", code="not_owner")


async def may_list(runtime: Runtime, principal: Principal, account: str | None) -> bool:
    """Whether the token may list the settlements of `account` (all when None). A token
    bound to an owner must name one of its accounts (422 without); another's lists empty."""
    if principal.owner is None:
        return True
    if account is None:
        raise Problem(422, "a token bound to an owner lists by account: add ?account= with"
                      " one of its accounts", code="account_required")
    owners = await _owners(runtime, [account])
    return owners.get(account) == principal.owner


@dataclass(frozen=True, slots=True)
class Visible:
    """A settlement the token may read, and which of its accounts are the token's owner's
    (None: the token is bound to no owner)."""

    settlement_id: str
    owned: frozenset[str] | None


def accounts_owned(principal: Principal, accounts: Collection[str]) -> frozenset[str] | None:
    """`accounts`, known to be the token's owner's, as `may_read_details` takes them."""
    return None if principal.owner is None else frozenset(accounts)


def may_read_details(row: Any, owned: frozenset[str] | None) -> bool:
    """Whether a reader holding the accounts `owned` (None: a token bound to no owner) may
    read why the settlement of `row` was refused: only if it pays every leg."""
    if owned is None:
        return True
    return all(leg.from_account in owned for leg in legs_of(row).values())


def as_readable(view: SettlementView, row: Any, owned: frozenset[str] | None) -> SettlementView:
    """`view` of `row`, without why it was refused (in free text) unless `may_read_details`,
    and for a token bound to an owner, without who retried it (`without_operators`)."""
    if owned is None:
        return view
    view = without_operators(view)
    return view if may_read_details(row, owned) else without_details(view)


async def visible_transfer(
    transfer_id: _IdPath, runtime: _Runtime, principal: CurrentPrincipal
) -> Visible:
    """The path's transfer, when the token may read it; else SettlementNotFound."""
    return await _require_visible(runtime, principal, transfer_id, SettlementKind.TRANSFER)


async def visible_trade(
    trade_id: _IdPath, runtime: _Runtime, principal: CurrentPrincipal
) -> Visible:
    """The path's trade, when the token may read it; else SettlementNotFound."""
    return await _require_visible(runtime, principal, trade_id, SettlementKind.TRADE)


VisibleTransfer = Annotated[Visible, Depends(visible_transfer)]
VisibleTrade = Annotated[Visible, Depends(visible_trade)]


async def _require_visible(
    runtime: Runtime, principal: Principal, transfer_id: str, kind: SettlementKind
) -> Visible:
    if principal.owner is None:
        return Visible(transfer_id, None)
    store = runtime.store
    row = await queries.settlement_row(store, store.pool, transfer_id, kind)
    owners = await _owners(runtime, row["accounts"])
    if principal.owner not in owners.values():
        raise SettlementNotFound(transfer_id)
    mine = [account for account, owner in owners.items() if owner == principal.owner]
    return Visible(transfer_id, accounts_owned(principal, mine))


async def _owners(runtime: Runtime, account_ids: Sequence[str]) -> dict[str, str]:
    try:
        return await ask_owners(runtime.nc, runtime.settings, sorted(set(account_ids)))
    except OwnersUnavailable as error:
        raise Problem(503, "the account service did not say who owns the accounts; retry"
                      " later", code="unavailable") from error
