"""The risk service's HTTP routes: set limits, block and unblock, read an account's risk, and
list decisions.

Risk only answers for accounts it has seen (through the account service's events, in its
`risk_accounts` view): an account it has not is a 404, and the view's currency is what a
limit's decimal string is read in. Writes run in a unit of work, retried a bounded number
of times when a concurrent writer (a saga's assess, say) appended first. Reads come from
the inline read models, as current as the last commit. Every error is problem+json.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.routing import APIRoute

from eventstore import START, EventStore, Position, UnitOfWork
from eventstore._db import Executor
from ledger.cursors import encode_cursor, place_after
from ledger.dependencies import runtime_of
from ledger.host import Runtime
from ledger.idempotency import in_unit_of_work
from ledger.money import AmountError
from ledger.problems import Problem, problem_responses
from ledger.settings import Settings
from risk_service import domain, repository
from risk_service.account_view import account_views
from risk_service.contracts import Limits
from risk_service.domain import AccountView
from risk_service.views import (
    ID_PATTERN,
    MAX_CURSOR_CHARS,
    DecisionPage,
    Outcome,
    Reason,
    RiskAccount,
    SetLimits,
    decision_of,
    limits_of,
    risk_account_of,
)

DEFAULT_PAGE_ITEMS: Final = 50
MAX_PAGE_ITEMS: Final = 500


def utc_now() -> datetime:
    """The time the routes decide at (a dependency, so tests may fix it)."""
    return datetime.now(UTC)


def default_limits(settings: Settings) -> Limits:
    """The limits of an account that has none of its own, from `LEDGER_RISK_DEFAULT_…`."""
    return Limits(
        max_transfer_minor=settings.risk_default_max_transfer_minor,
        daily_outflow_minor=settings.risk_default_daily_outflow_minor,
        max_open_exposure_minor=settings.risk_default_max_open_exposure_minor,
        max_movements_per_minute=settings.risk_max_movements_per_minute,
    )


RiskRuntime = Annotated[Runtime, Depends(runtime_of("risk"))]
Now = Annotated[datetime, Depends(utc_now)]
AccountIdPath = Annotated[str, Path(pattern=ID_PATTERN)]


class _RiskRoute(APIRoute):
    """A route whose invalid amounts answer 422 problem+json."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except AmountError as error:
                raise Problem(422, str(error), code="invalid_amount") from error

        return answer


router = APIRouter(prefix="/v1/risk", tags=["risk"], route_class=_RiskRoute,
                   responses=problem_responses(422, 503))
_UNKNOWN: Final = problem_responses(404)
_REFUSABLE: Final = problem_responses(404, 409)


@router.get("/accounts/{account_id}", responses=_UNKNOWN)
async def get_account(account_id: AccountIdPath, runtime: RiskRuntime, now: Now) -> RiskAccount:
    """The account's limits in force, block, open exposure and outflow in the last 24 hours.

    404 if risk has never seen the account."""
    store = runtime.store
    view = await _known_account(store, store.pool, account_id)
    state = await repository.load(store, store.pool, account_id)
    return _answer(runtime, view, state, now)


@router.put("/accounts/{account_id}/limits", responses=_REFUSABLE)
async def set_limits(
    account_id: AccountIdPath, body: SetLimits, runtime: RiskRuntime, now: Now
) -> RiskAccount:
    """Replace the account's limits; an absent or null one falls back to the default."""
    store = runtime.store
    view = await _known_account(store, store.pool, account_id)
    limits = limits_of(body, runtime.settings.assets(), view.currency)
    return await _change(runtime, view, lambda state: domain.set_limits(state, limits), now)


@router.post("/accounts/{account_id}/block", responses=_REFUSABLE)
async def block(account_id: AccountIdPath, body: Reason, runtime: RiskRuntime, now: Now
                ) -> RiskAccount:
    """Refuse every movement out of the account until unblocked. Blocking a blocked
    account changes nothing (it keeps its first reason)."""
    view = await _known_account(runtime.store, runtime.store.pool, account_id)
    return await _change(runtime, view, lambda state: domain.block(state, body.reason), now)


@router.post("/accounts/{account_id}/unblock", responses=_REFUSABLE)
async def unblock(account_id: AccountIdPath, body: Reason, runtime: RiskRuntime, now: Now
                  ) -> RiskAccount:
    """Assess the account's movements again; unblocking an unblocked account changes nothing."""
    view = await _known_account(runtime.store, runtime.store.pool, account_id)
    return await _change(runtime, view, lambda state: domain.unblock(state, body.reason), now)


@router.get("/decisions")
async def list_decisions(
    runtime: RiskRuntime,
    account: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    outcome: Outcome | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_ITEMS)] = DEFAULT_PAGE_ITEMS,
    cursor: Annotated[str | None, Query(max_length=MAX_CURSOR_CHARS)] = None,
) -> DecisionPage:
    """Approvals and refusals matching every filter given, oldest first; `next` is the
    cursor of the next page."""
    after = await place_after(runtime.store, cursor, "decisions")
    rows = await _decision_rows(runtime.store, account, outcome, after, limit + 1)
    assets = runtime.settings.assets()
    items = [decision_of(row, assets) for row in rows[:limit]]
    if len(rows) <= limit:
        return DecisionPage(items=items, next=None)
    last = rows[limit - 1]
    next_cursor = encode_cursor("decisions", Position(last["tx_id"], last["global_position"]))
    return DecisionPage(items=items, next=next_cursor)


async def _change(
    runtime: Runtime, view: AccountView, decision: repository.Decision, now: datetime
) -> RiskAccount:
    async def work(unit: UnitOfWork) -> domain.RiskState:
        state, _ = await repository.decide_and_save(unit, view.account_id, decision)
        return state

    attempts = runtime.settings.write_conflict_attempts
    state = await in_unit_of_work(runtime.store, work, attempts=attempts)
    return _answer(runtime, view, state, now)


def _answer(runtime: Runtime, view: AccountView, state: domain.RiskState, now: datetime
            ) -> RiskAccount:
    settings = runtime.settings
    return risk_account_of(view, state, default_limits(settings), now, settings.assets())


async def _known_account(store: EventStore, executor: Executor, account_id: str) -> AccountView:
    view = (await account_views(executor, store.schema, [account_id])).get(account_id)
    if view is None:
        raise Problem(404, f"account {account_id} is unknown to risk: no account event about"
                      " it has reached the risk service", code="unknown_account")
    return view


async def _decision_rows(
    store: EventStore, account: str | None, outcome: Outcome | None, after: Position | None,
    limit: int,
) -> list[Any]:
    """Decisions in commit order after `after`, below the store's settled horizon, so that
    none can commit later at a place a client following the list has passed
    (docs/list-order.md)."""
    # Only the filters given become conditions, so each query can use its index.
    conditions = [
        "(d.tx_id, d.global_position) > ($1::xid8, $2::bigint)",
        "d.tx_id < $3::xid8",
    ]
    arguments: list[object] = [*(after or START), await store.settled_horizon()]
    for column, value in (("account_id", account), ("outcome", outcome)):
        if value is not None:
            arguments.append(str(value))
            conditions.append(f"d.{column} = ${len(arguments)}")
    arguments.append(limit)
    return await store.pool.fetch(
        f"select d.*, a.currency as account_currency from {store.schema}.risk_decisions d"
        f" left join {store.schema}.risk_accounts a using (account_id)"
        f" where {' and '.join(conditions)} order by d.tx_id, d.global_position"
        f" limit ${len(arguments)}",
        *arguments,
    )
