"""The account service's HTTP routes: parse, decide through the domain, persist, answer.

Writes run in a unit of work (`decide_and_save` locks the account's row, so writers of one
account queue), retried a bounded number of times on a lost race. Deposits and withdrawals
need an `Idempotency-Key` (a 422 without one): money must not move twice because a client
retried. Reads come from the inline read models, as current as the last commit. Every error
is problem+json (`views.problem_of` maps the domain's refusals to statuses).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.routing import APIRoute

from account_service import domain, queries, repository
from account_service.access import ReadableAccountId, WritableAccountId
from account_service.contracts import AccountEvent
from account_service.domain import AccountState, Status
from account_service.errors import AccountError, InsufficientFunds
from account_service.projections import state_from_row
from account_service.views import (
    ID_PATTERN,
    MAX_CURSOR_CHARS,
    Account,
    AccountPage,
    Balance,
    EntryPage,
    EventPage,
    Freeze,
    Movement,
    OpenAccount,
    Posted,
    account_of,
    audit_event_of,
    balance_of,
    decode_cursor,
    entry_of,
    insufficient_funds,
    problem_of,
)
from eventstore import UnitOfWork
from ledger.auth import CurrentPrincipal, require_acts_for
from ledger.cursors import encode_cursor
from ledger.dependencies import runtime_of
from ledger.host import Runtime
from ledger.idempotency import (
    Answer,
    IdempotencyKey,
    IdempotentRequest,
    OptionalIdempotencyKey,
    in_unit_of_work,
    once,
)
from ledger.money import ASSET_CODE_PATTERN, AmountError, Assets
from ledger.problems import Problem, problem_responses
from ledger.validation import Instant

DEFAULT_PAGE_ITEMS: Final = 50
MAX_PAGE_ITEMS: Final = 500
_ZERO: Final = re.compile(r"^0(\.0{1,30})?$")

AccountRuntime = Annotated[Runtime, Depends(runtime_of("account"))]
AccountIdPath = Annotated[str, Path(pattern=ID_PATTERN)]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE_ITEMS)]
Cursor = Annotated[str | None, Query(max_length=MAX_CURSOR_CHARS)]
AsOf = Annotated[Instant | None, Query(description="An RFC 3339 time with its offset.")]
Move = Callable[[AccountState, int, str, str | None], list[AccountEvent]]


class _AccountRoute(APIRoute):
    """A route whose account refusals and invalid amounts answer as problem+json."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except (AccountError, AmountError) as error:
                raise problem_of(error) from error

        return answer


router = APIRouter(prefix="/v1/accounts", tags=["accounts"], route_class=_AccountRoute,
                   responses=problem_responses(422, 503))
_UNKNOWN: Final = problem_responses(404)
_REFUSABLE: Final = problem_responses(404, 409)


@router.post("", status_code=201, response_model=Account, responses=problem_responses(409))
async def open_account(
    request: Request, body: OpenAccount, runtime: AccountRuntime, key: OptionalIdempotencyKey,
    principal: CurrentPrincipal,
) -> Response:
    """Open an account holding one currency or instrument; with an Idempotency-Key, once."""
    require_acts_for(principal, body.owner, f"open an account for owner {body.owner}")
    assets = runtime.settings.assets()
    if body.currency not in assets.scales:
        known = ", ".join(sorted(assets.scales))
        raise Problem(422, f"unknown currency or instrument {body.currency!r} (known: {known})",
                      code="unknown_currency")
    overdraft_minor = _overdraft_minor(assets, body.overdraft_limit, body.currency)

    async def effect(unit: UnitOfWork) -> Answer:
        account_id = str(uuid.uuid4())
        events = domain.open_account(None, account_id, body.owner, body.currency,
                                     overdraft_minor)
        await repository.save(unit, None, account_id, events)
        row = await queries.account_row(unit.store, unit.connection, account_id)
        return Answer(201, account_of(row, assets).model_dump(mode="json"))

    return await _answer(request, runtime, "accounts", key, body.model_dump(mode="json"), effect)


@router.get("/{account_id}", responses=_UNKNOWN)
async def get_account(account_id: ReadableAccountId, runtime: AccountRuntime) -> Account:
    """The account as of the last committed change."""
    row = await queries.account_row(runtime.store, runtime.store.pool, account_id)
    return account_of(row, runtime.settings.assets())


@router.get("")
async def list_accounts(
    runtime: AccountRuntime,
    principal: CurrentPrincipal,
    owner: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    currency: Annotated[str | None, Query(pattern=ASSET_CODE_PATTERN)] = None,
    status: Status | None = None,
    limit: Limit = DEFAULT_PAGE_ITEMS,
    cursor: Cursor = None,
) -> AccountPage:
    """Accounts matching every filter given, by id; `next` is the cursor of the next page.
    A token bound to an owner lists that owner's accounts only."""
    if principal.owner is not None:
        if owner not in (None, principal.owner):
            return AccountPage(items=[], next=None)
        owner = principal.owner
    after = decode_cursor(cursor, "accounts", str)
    filters = {"owner": owner, "currency": currency, "status": status.value if status else None}
    rows = await queries.account_rows(runtime.store, filters, after, limit + 1)
    assets = runtime.settings.assets()
    items = [account_of(row, assets) for row in rows[:limit]]
    is_more = len(rows) > limit
    return AccountPage(items=items, next=encode_cursor("accounts", items[-1].id) if is_more
                       else None)


@router.post("/{account_id}/deposits", status_code=201, response_model=Posted,
             responses=_REFUSABLE)
async def deposit(
    request: Request, account_id: WritableAccountId, body: Movement, runtime: AccountRuntime,
    key: IdempotencyKey,
) -> Response:
    """Money in from outside the ledger, once per Idempotency-Key."""
    return await _post_movement(request, runtime, account_id, body, key, domain.deposit)


@router.post("/{account_id}/withdrawals", status_code=201, response_model=Posted,
             responses=_REFUSABLE)
async def withdraw(
    request: Request, account_id: WritableAccountId, body: Movement, runtime: AccountRuntime,
    key: IdempotencyKey,
) -> Response:
    """Money out of the ledger, once per Idempotency-Key; 409 beyond what is available."""
    return await _post_movement(request, runtime, account_id, body, key, domain.withdraw)


@router.post("/{account_id}/freeze", responses=_REFUSABLE)
async def freeze(
    account_id: WritableAccountId, runtime: AccountRuntime, body: Freeze | None = None
) -> Account:
    """Refuse new debits and credits until unfrozen (holds in progress still end)."""
    reason = body.reason if body else None
    return await _change(runtime, account_id, lambda state: domain.freeze(state, reason))


@router.post("/{account_id}/unfreeze", responses=_REFUSABLE)
async def unfreeze(account_id: WritableAccountId, runtime: AccountRuntime) -> Account:
    """Accept debits and credits again."""
    return await _change(runtime, account_id, domain.unfreeze)


@router.post("/{account_id}/close", responses=_REFUSABLE)
async def close(account_id: WritableAccountId, runtime: AccountRuntime) -> Account:
    """Close for good; 409 unless the balance is zero and no hold is open."""
    return await _change(runtime, account_id, domain.close)


@router.get("/{account_id}/entries", responses=_UNKNOWN)
async def list_entries(
    account_id: ReadableAccountId, runtime: AccountRuntime, as_of: AsOf = None,
    limit: Limit = DEFAULT_PAGE_ITEMS, cursor: Cursor = None,
) -> EntryPage:
    """Every posted movement, oldest first, with the balance right after it."""
    store = runtime.store
    after = decode_cursor(cursor, "entries", int)
    row = await queries.account_row(store, store.pool, account_id)
    rows = await queries.entry_rows(
        store, store.pool, account_id, after=after, as_of=as_of, limit=limit + 1
    )
    assets = runtime.settings.assets()
    items = [entry_of(entry, assets, row["currency"]) for entry in rows[:limit]]
    is_more = len(rows) > limit
    return EntryPage(
        items=items, next=encode_cursor("entries", items[-1].global_position) if is_more
        else None,
    )


@router.get("/{account_id}/balance", responses=_UNKNOWN)
async def balance(account_id: ReadableAccountId, runtime: AccountRuntime, as_of: AsOf = None
                  ) -> Balance:
    """The balances now, or at `as_of` as the account's events recorded by then tell."""
    store = runtime.store
    row = await queries.account_row(store, store.pool, account_id)
    if as_of is None:
        state: AccountState | None = state_from_row(row)
    else:
        state = await queries.state_as_of(store, account_id, as_of)
    return balance_of(account_id, row["currency"], state, as_of, runtime.settings.assets())


@router.get("/{account_id}/events", responses=_UNKNOWN)
async def list_events(
    account_id: ReadableAccountId, runtime: AccountRuntime, principal: CurrentPrincipal,
    limit: Limit = DEFAULT_PAGE_ITEMS, cursor: Cursor = None,
) -> EventPage:
    """The account's stored events, the audit trail, with their chain hashes. A token bound
    to an owner sees the request identity (actor, correlation, trace) of its own requests
    only."""
    after = decode_cursor(cursor, "events", int)
    events = await queries.audit_events(runtime.store, account_id, after=after, limit=limit + 1)
    items = [audit_event_of(event, principal) for event in events[:limit]]
    is_more = len(events) > limit
    return EventPage(
        items=items, next=encode_cursor("events", items[-1].stream_version) if is_more
        else None,
    )


async def _post_movement(
    request: Request, runtime: AccountRuntime, account_id: str, body: Movement, key: str,
    move: Move,
) -> Response:
    assets = runtime.settings.assets()

    def decide(state: AccountState) -> list[AccountEvent]:
        amount_minor = assets.parse(body.amount, state.currency)
        try:
            return move(state, amount_minor, str(uuid.uuid4()), body.reference)
        except InsufficientFunds as error:
            raise insufficient_funds(error, assets, state.currency) from error

    async def effect(unit: UnitOfWork) -> Answer:
        try:
            state, recorded = await repository.decide_and_save(unit, account_id, decide)
        except (AccountError, AmountError) as error:
            raise problem_of(error) from error  # inside, so `once` keeps a 409 with its key
        assert len(recorded) == 1, "a deposit or withdrawal is one event"
        entry = await queries.entry_row(unit.store, unit.connection, recorded[0].global_position)
        row = await queries.account_row(unit.store, unit.connection, account_id)
        posted = Posted(entry=entry_of(entry, assets, state.currency),
                        account=account_of(row, assets))
        return Answer(201, posted.model_dump(mode="json"))

    scope = f"account:{account_id}"
    return await _answer(request, runtime, scope, key, body.model_dump(mode="json"), effect)


async def _answer(
    request: Request, runtime: Runtime, scope: str, key: str | None, body: dict[str, Any],
    effect: Callable[[UnitOfWork], Awaitable[Answer]],
) -> Response:
    """The effect's answer: once per key if the request has one, else simply retried."""
    attempts = runtime.settings.write_conflict_attempts
    path = request.url.path
    if key is None:
        answer = await in_unit_of_work(runtime.store, effect, attempts=attempts)
        return answer.response()
    idempotent = IdempotentRequest.of(request, scope, key, body)
    answer = await once(runtime.store, idempotent, effect, attempts=attempts, instance=path)
    return answer.response()


async def _change(
    runtime: Runtime, account_id: str, decision: repository.Decision
) -> Account:
    async def work(unit: UnitOfWork) -> Any:
        await repository.decide_and_save(unit, account_id, decision)
        return await queries.account_row(unit.store, unit.connection, account_id)

    attempts = runtime.settings.write_conflict_attempts
    row = await in_unit_of_work(runtime.store, work, attempts=attempts)
    return account_of(row, runtime.settings.assets())


def _overdraft_minor(assets: Assets, text: str | None, currency: str) -> int:
    """The overdraft limit in minor units: none, zero, or a valid positive amount."""
    if text is None or assets.is_zero(text):
        return 0
    return assets.parse(text, currency)
