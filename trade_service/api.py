"""The trade service's HTTP routes: request transfers and trades, and follow them.

A request is validated as far as the trade service can know (amounts in their asset's
scale, known assets, distinct accounts; it does not know accounts, so an unknown one is the
saga's refusal, `rejected` with `unknown_account`), then its `...Requested` event is
appended to a new stream `transfer-<id>` or `trade-<id>`, once per `Idempotency-Key`, and
the answer is `202`: the saga settles it. Reads come from the inline `settlements` table;
`?wait=N` holds a read until the outcome is final or N seconds passed, woken by the store's
append notifications rather than by polling. Every error is problem+json.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.routing import APIRoute

from eventstore import NO_STREAM, Position, UnitOfWork
from ledger.auth import CurrentPrincipal
from ledger.cursors import encode_cursor, place_after
from ledger.dependencies import runtime_of
from ledger.host import Runtime
from ledger.idempotency import Answer, IdempotencyKey, IdempotentRequest, once
from ledger.money import AmountError, Assets
from ledger.problems import Problem, problem_responses
from trade_service import access, domain, queries
from trade_service.access import VisibleTrade, VisibleTransfer
from trade_service.contracts import SettlementStatus, TradeEvent, TradeRequested, TransferRequested
from trade_service.domain import Party, SettlementError, SettlementKind, TradeOrder
from trade_service.events import stream_of, to_new_event
from trade_service.projections import requested_row
from trade_service.steps import step_rows
from trade_service.views import (
    ID_PATTERN,
    MAX_CURSOR_CHARS,
    Step,
    Trade,
    TradePage,
    TradeRequest,
    Transfer,
    TransferPage,
    TransferRequest,
    problem_of,
    trade_of,
    transfer_of,
)
from trade_service.waiting import settled_row

SERVICE: Final = "trade"
DEFAULT_PAGE_ITEMS: Final = 50
MAX_PAGE_ITEMS: Final = 500
MAX_WAIT_S: Final = 30.0

TradeRuntime = Annotated[Runtime, Depends(runtime_of(SERVICE))]
IdPath = Annotated[str, Path(pattern=ID_PATTERN)]
Wait = Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="Seconds to hold the answer"
                                                                " until the outcome is final.")]
AccountFilter = Annotated[str | None, Query(pattern=ID_PATTERN,
                                            description="On either side of any leg.")]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE_ITEMS)]
Cursor = Annotated[str | None, Query(max_length=MAX_CURSOR_CHARS)]


class _TradeRoute(APIRoute):
    """A route whose refusals and invalid amounts answer as problem+json."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except (SettlementError, AmountError) as error:
                raise problem_of(error) from error

        return answer


router = APIRouter(prefix="/v1", tags=["transfers and trades"], route_class=_TradeRoute,
                   responses=problem_responses(422, 503))
_UNKNOWN: Final = problem_responses(404)
_REFUSABLE: Final = problem_responses(409)
SETTLEMENTS_SCOPE: Final = "settlements"
"""Where an Idempotency-Key of `POST /v1/transfers` and `POST /v1/trades` counts."""


@router.post("/transfers", status_code=202, response_model=Transfer, responses=_REFUSABLE)
async def request_transfer(
    request: Request, body: TransferRequest, runtime: TradeRuntime, key: IdempotencyKey,
    principal: CurrentPrincipal,
) -> Response:
    """Ask to move money; once per Idempotency-Key. 202: the saga settles it."""
    assets = runtime.settings.assets()
    _require_known(assets, body.currency, "currency")
    amount_minor = assets.parse(body.amount, body.currency)

    def decide(transfer_id: str, now: datetime) -> list[TradeEvent]:
        return domain.request_transfer(transfer_id, body.from_account, body.to_account,
                                       amount_minor, body.currency, body.reference, now)

    decide(str(uuid.uuid4()), _now())  # refuse what can never settle before taking the key
    await access.require_payers(runtime, principal, [body.from_account])
    return await _request(request, runtime, key, body.model_dump(mode="json"),
                          SettlementKind.TRANSFER, decide)


@router.post("/trades", status_code=202, response_model=Trade, responses=_REFUSABLE)
async def request_trade(
    request: Request, body: TradeRequest, runtime: TradeRuntime, key: IdempotencyKey,
    principal: CurrentPrincipal,
) -> Response:
    """Ask to exchange `quantity` of `instrument` for quantity * `price` in `currency`,
    delivery versus payment (both legs or neither); once per Idempotency-Key."""
    order = _trade_order(runtime.settings.assets(), body)

    def decide(transfer_id: str, now: datetime) -> list[TradeEvent]:
        return domain.request_trade(transfer_id, order, now)

    decide(str(uuid.uuid4()), _now())
    payers = [body.buyer.cash_account, body.seller.asset_account]
    await access.require_payers(runtime, principal, payers)
    return await _request(request, runtime, key, body.model_dump(mode="json"),
                          SettlementKind.TRADE, decide)


@router.get("/transfers/{transfer_id}", responses=_UNKNOWN)
async def get_transfer(
    visible: VisibleTransfer, runtime: TradeRuntime, wait: Wait = 0
) -> Transfer:
    """The transfer, its outcome and the saga's steps; with `wait`, once final (or after
    `wait` seconds, still pending)."""
    transfer_id = visible.settlement_id
    row = await _settled_row(runtime, transfer_id, SettlementKind.TRANSFER, wait)
    view = transfer_of(row, await _steps(runtime, transfer_id), runtime.settings.assets())
    return access.as_readable(view, row, visible.owned)


@router.get("/trades/{trade_id}", responses=_UNKNOWN)
async def get_trade(visible: VisibleTrade, runtime: TradeRuntime, wait: Wait = 0) -> Trade:
    """The trade, its outcome and the saga's steps; with `wait`, once final (or after
    `wait` seconds, still pending)."""
    trade_id = visible.settlement_id
    row = await _settled_row(runtime, trade_id, SettlementKind.TRADE, wait)
    view = trade_of(row, await _steps(runtime, trade_id), runtime.settings.assets())
    return access.as_readable(view, row, visible.owned)


@router.get("/transfers")
async def list_transfers(
    runtime: TradeRuntime, principal: CurrentPrincipal, account: AccountFilter = None,
    status: SettlementStatus | None = None, limit: Limit = DEFAULT_PAGE_ITEMS,
    cursor: Cursor = None,
) -> TransferPage:
    """Transfers matching every filter given, newest first; `next` is the next page's cursor.
    Steps are left out of lists (read one transfer for them)."""
    if not await access.may_list(runtime, principal, account):
        return TransferPage(items=[], next=None)
    rows, next_cursor = await _page(runtime, SettlementKind.TRANSFER, account, status, limit,
                                    cursor)
    assets = runtime.settings.assets()
    owned = access.accounts_owned(principal, [account] if account else [])
    items = [access.as_readable(transfer_of(row, [], assets), row, owned) for row in rows]
    return TransferPage(items=items, next=next_cursor)


@router.get("/trades")
async def list_trades(
    runtime: TradeRuntime, principal: CurrentPrincipal, account: AccountFilter = None,
    status: SettlementStatus | None = None, limit: Limit = DEFAULT_PAGE_ITEMS,
    cursor: Cursor = None,
) -> TradePage:
    """Trades matching every filter given, newest first; `next` is the next page's cursor.
    Steps are left out of lists (read one trade for them)."""
    if not await access.may_list(runtime, principal, account):
        return TradePage(items=[], next=None)
    rows, next_cursor = await _page(runtime, SettlementKind.TRADE, account, status, limit,
                                    cursor)
    assets = runtime.settings.assets()
    owned = access.accounts_owned(principal, [account] if account else [])
    items = [access.as_readable(trade_of(row, [], assets), row, owned) for row in rows]
    return TradePage(items=items, next=next_cursor)


async def _request(
    request: Request, runtime: Runtime, key: str, body: dict[str, Any], kind: SettlementKind,
    decide: Callable[[str, datetime], list[TradeEvent]],
) -> Response:
    """Append a new settlement's request once per key; 202 with the settlement."""
    assets = runtime.settings.assets()

    async def effect(unit: UnitOfWork) -> Answer:
        transfer_id = str(uuid.uuid4())
        [requested] = decided = decide(transfer_id, _now())
        assert isinstance(requested, TransferRequested | TradeRequested), "a request, alone"
        result = await unit.append(stream_of(kind, transfer_id),
                                   [to_new_event(event) for event in decided], NO_STREAM)
        row = requested_row(requested, result.events[0])  # as the inline projection wrote it
        view = (transfer_of(row, [], assets) if kind is SettlementKind.TRANSFER
                else trade_of(row, [], assets))
        return Answer(202, view.model_dump(mode="json"))

    path = request.url.path
    # One scope for transfers and trades: a key sent to both is one request, and refused
    # for the second; before, each had its own (`legacy_scope`).
    idempotent = IdempotentRequest.of(request, SETTLEMENTS_SCOPE, key, body,
                                      legacy_scope=f"{kind.value}s")
    answer = await once(runtime.store, idempotent, effect,
                        attempts=runtime.settings.write_conflict_attempts, instance=path)
    return answer.response()


def _trade_order(assets: Assets, body: TradeRequest) -> TradeOrder:
    """The trade in minor units; 422 problems for unknown assets and inexact amounts."""
    _require_known(assets, body.instrument, "instrument")
    _require_known(assets, body.currency, "currency")
    quantity_minor = assets.parse(body.quantity, body.instrument)
    price = domain.parse_price(body.price)
    cash_minor = domain.cash_amount_minor(quantity_minor, assets.scale(body.instrument), price,
                                          body.currency, assets.scale(body.currency))
    if cash_minor == 0:
        raise Problem(422, f"quantity * price is less than the smallest amount of {body.currency}",
                      code="inexact_amount")
    if cash_minor > assets.max_amount_minor:
        maximum = assets.format(assets.max_amount_minor, body.currency)
        raise Problem(422, f"quantity * price exceeds the maximum of {maximum} {body.currency}",
                      code="invalid_amount")
    buyer = Party(body.buyer.cash_account, body.buyer.asset_account)
    seller = Party(body.seller.cash_account, body.seller.asset_account)
    return TradeOrder(body.instrument, quantity_minor, price, body.currency, cash_minor,
                      buyer, seller)


def _require_known(assets: Assets, asset: str, what: str) -> None:
    if asset not in assets.scales:
        known = ", ".join(sorted(assets.scales))
        raise Problem(422, f"unknown {what} {asset!r} (known: {known})", code=f"unknown_{what}")


async def _settled_row(runtime: Runtime, transfer_id: str, kind: SettlementKind, wait_s: float
                       ) -> Any:
    """The settlement's row once it is final, or as it is after `wait_s` seconds (the reads
    woken by one append share one query: `trade_service.waiting`)."""
    return await settled_row(runtime.store, runtime.notifier, transfer_id, kind, wait_s,
                             runtime.settings.trade_wait_recheck_s)  # fmt: skip


async def _steps(runtime: Runtime, transfer_id: str) -> list[Step]:
    rows = await step_rows(runtime.store.pool, runtime.store.schema, transfer_id)
    return [Step(seq=row["seq"], step=row["step"], outcome=row["outcome"], at=row["at"],
                 detail=row["detail"]) for row in rows]


async def _page(
    runtime: Runtime, kind: SettlementKind, account: str | None,
    status: SettlementStatus | None, limit: int, cursor: str | None,
) -> tuple[list[Any], str | None]:
    """One page of rows and the cursor of the next (None: this is the last)."""
    list_name = f"{kind.value}s"
    before = await place_after(runtime.store, cursor, list_name)
    rows = await queries.settlement_rows(
        runtime.store, kind, account=account, status=status.value if status else None,
        before=before, limit=limit + 1, horizon=await runtime.store.settled_horizon(),
    )
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], encode_cursor(list_name, Position(last["tx_id"], last["position"]))


def _now() -> datetime:
    return datetime.now(UTC)
