"""Reads for the trade API: the inline settlements rows and the saga's steps."""

from __future__ import annotations

from typing import Any

from eventstore import EventStore, Position
from eventstore._db import Executor
from trade_service.domain import SettlementKind, SettlementNotFound
from trade_service.projections import SETTLEMENT_COLUMNS, TABLE


async def settlement_row(
    store: EventStore, executor: Executor, transfer_id: str, kind: SettlementKind
) -> Any:
    """The settlements row of a transfer or trade; SettlementNotFound when there is none of
    that kind."""
    row = await executor.fetchrow(
        f"select {SETTLEMENT_COLUMNS} from {store.schema}.{TABLE}"
        " where transfer_id = $1 and kind = $2",
        transfer_id, kind.value,
    )
    if row is None:
        raise SettlementNotFound(transfer_id)
    return row


async def settlement_rows(
    store: EventStore, kind: SettlementKind, *, account: str | None, status: str | None,
    before: Position | None, limit: int, horizon: int,
) -> list[Any]:
    """Up to `limit` rows of `kind`, newest first in commit order, requested before `before`,
    with `account` on any leg (from or to) and in `status`, when given.

    Only requests below `horizon` (`EventStore.settled_horizon`) are listed, so no request
    can commit later at a place a client paging this list has passed (docs/list-order.md)."""
    return await store.pool.fetch(
        f"select {SETTLEMENT_COLUMNS} from {store.schema}.{TABLE} where kind = $1"
        " and tx_id < $7::xid8"
        " and ($2::text is null or accounts @> array[$2::text])"
        " and ($3::text is null or status = $3)"
        " and ($4::xid8 is null or (tx_id, position) < ($4::xid8, $5::bigint))"
        " order by tx_id desc, position desc limit $6",
        kind.value, account, status, *(before or (None, None)), limit, horizon,
    )  # fmt: skip
