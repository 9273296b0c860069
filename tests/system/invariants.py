"""The invariants of DESIGN section 3, checked against the running system.

`check_snapshot` is cheap (one SQL statement, one consistent snapshot of the balances read
model) and runs after every step, while sagas are still in flight. `check_quiescent` runs
once every settlement is final and every saga has ended: balances over HTTP, entries,
holds, risk exposure, hash chains and read models against their rebuilds.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from decimal import Decimal
from typing import Any, Final

import httpx

from account_service.contracts import HoldSide, hold_id
from account_service.events import stream_of as account_stream
from eventstore import rebuild, verify_chains
from risk_service.events import stream_of as risk_stream
from saga.contracts import stream_of as saga_stream
from tests.system.harness import SystemUnderTest
from tests.system.model import FINAL, SAGA_FINAL, LedgerModel, SettlementModel

SETTLE_TIMEOUT_S: Final = 120.0
WAIT_S: Final = 10
SCALES: Final = {"USD": 2, "ACME": 0}


def minor(text: str, currency: str) -> int:
    """A decimal string of the API as minor units."""
    value = Decimal(text).scaleb(SCALES[currency])
    assert value == value.to_integral_value(), f"{text} {currency} has too many decimals"
    return int(value)


def expect(response: httpx.Response, status: int) -> Any:
    """The JSON body of a response that must have `status`."""
    assert response.status_code == status, (
        f"{response.request.method} {response.request.url.path} answered"
        f" {response.status_code}, not {status}: {response.text[:500]}"
    )
    return response.json()


async def wait_final(client: httpx.AsyncClient, settlement: SettlementModel) -> dict[str, Any]:
    """The settlement once its status is final (fails after SETTLE_TIMEOUT_S)."""
    path = f"/v1/{settlement.kind}s/{settlement.settlement_id}"
    async with asyncio.timeout(SETTLE_TIMEOUT_S):
        while True:
            body: dict[str, Any] = expect(await client.get(path, params={"wait": WAIT_S}), 200)
            if body["status"] in FINAL:
                return body


async def wait_saga_ended(client: httpx.AsyncClient, saga_id: str) -> dict[str, Any]:
    """The saga once it has ended (its final status recorded after the trade's outcome)."""
    async with asyncio.timeout(SETTLE_TIMEOUT_S):
        while True:
            saga: dict[str, Any] = expect(await client.get(f"/v1/sagas/{saga_id}"), 200)
            assert saga["status"] != "requires_intervention", f"saga parked: {saga}"
            if saga["status"] in SAGA_FINAL:
                return saga
            await asyncio.sleep(0.05)


async def wait_saga_status(client: httpx.AsyncClient, saga_id: str, status: str
                           ) -> dict[str, Any]:  # fmt: skip
    """The saga once its status is `status` (it may not have started yet); fails if it
    ends otherwise, or after SETTLE_TIMEOUT_S."""
    last = "not started"
    try:
        async with asyncio.timeout(SETTLE_TIMEOUT_S):
            while True:
                response = await client.get(f"/v1/sagas/{saga_id}")
                if response.status_code == 404:  # its transfer's event is on its way
                    await asyncio.sleep(0.1)
                    continue
                saga: dict[str, Any] = expect(response, 200)
                last = f"{saga['status']}, steps {saga['steps']}"
                if saga["status"] == status:
                    return saga
                assert saga["status"] not in SAGA_FINAL, (
                    f"saga {saga_id} ended {saga['status']} ({saga['reason']}) before it was"
                    f" {status}: steps {saga['steps']}"
                )
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"saga {saga_id} was not {status} after {SETTLE_TIMEOUT_S} s:"
                             f" {last}") from None  # fmt: skip


async def check_snapshot(system: SystemUnderTest, model: LedgerModel) -> None:
    """Conservation per asset, no overdrawn account, pending debits matching pending
    credits, and every account no settlement in flight touches exactly as the model says
    (balance, no hold, status), in one snapshot of the balances read model."""
    if not model.accounts:
        return
    store = system.store("account")
    rows = await store.pool.fetch(
        f"select account_id, currency, posted_minor, pending_debits_minor,"
        f" pending_credits_minor, overdraft_limit_minor, status from {store.schema}.balances"
        " where account_id = any($1::text[])",
        list(model.accounts),
    )
    assert len(rows) == len(model.accounts), "every account opened is in the read model"
    posted: Counter[str] = Counter()
    debits: Counter[str] = Counter()
    credits: Counter[str] = Counter()
    for row in rows:
        account = model.accounts[row["account_id"]]
        posted[row["currency"]] += row["posted_minor"]
        debits[row["currency"]] += row["pending_debits_minor"]
        credits[row["currency"]] += row["pending_credits_minor"]
        available = row["posted_minor"] - row["pending_debits_minor"]
        assert available >= -row["overdraft_limit_minor"], f"overdrawn: {dict(row)}"
        assert row["status"] == ("frozen" if account.is_frozen else "open"), dict(row)
        if not model.is_busy(account.account_id):
            assert row["posted_minor"] == account.balance_minor, (dict(row), account)
            assert row["pending_debits_minor"] == 0, f"a hold outlived its saga: {dict(row)}"
            assert row["pending_credits_minor"] == 0, f"a hold outlived its saga: {dict(row)}"
    for currency in SCALES:
        assert posted[currency] == model.net_minor[currency], (
            f"{currency}: balances sum to {posted[currency]}, deposits minus withdrawals"
            f" are {model.net_minor[currency]}"
        )
        assert debits[currency] == credits[currency], (
            f"{currency}: pending debits {debits[currency]} != pending credits"
            f" {credits[currency]}"
        )


async def settle_all(system: SystemUnderTest, model: LedgerModel) -> None:
    """Wait until every settlement is final, record the outcomes in the model, then wait
    until every saga has ended."""
    client = system.http()
    for settlement in model.pending():
        body = await wait_final(client, settlement)
        model.settled(settlement.settlement_id, body["status"], body["reason"])
    for settlement_id in model.settlements:
        await wait_saga_ended(client, settlement_id)


async def check_quiescent(system: SystemUnderTest, model: LedgerModel) -> None:
    """Every invariant about the model's accounts and settlements, once nothing is in
    flight (after `settle_all`); `check_stores` checks the stores as a whole."""
    assert not model.pending(), "settle_all first"
    client = system.http()
    sagas = await _check_settlements(client, model)
    await _check_accounts(client, model)
    await _check_holds(system, model, sagas)
    await _check_risk(client, model)
    await _check_risk_decisions(client, model, sagas)
    await check_snapshot(system, model)
    await _check_chains_of(system, model)


async def _check_chains_of(system: SystemUnderTest, model: LedgerModel) -> None:
    """The hash chain of every stream the model's accounts and settlements wrote."""
    streams = {
        "account": [account_stream(a) for a in model.accounts],
        "risk": [risk_stream(a) for a in model.accounts],
        "trade": [f"{s.kind}-{s.settlement_id}" for s in model.settlements.values()],
        "saga": [saga_stream(s) for s in model.settlements],
    }
    for service, stream_ids in streams.items():
        for stream_id in stream_ids:
            report = await verify_chains(system.store(service), stream_id)
            assert report.is_intact, f"{stream_id}: hash chain broken: {report.first_break}"


async def check_stores(system: SystemUnderTest) -> None:
    """Every hash chain of every service intact; every read model equal to its rebuild.

    Whole stores, so it costs more as they grow: the state machine runs it at its end (and
    every few programs in long runs), not after each program."""
    for service in ("account", "risk", "trade", "saga"):
        store = system.store(service)
        report = await verify_chains(store)
        assert report.is_intact, f"{service}: hash chain broken: {report.first_break}"
        for projection in store.inline_projections:
            rebuilt = await rebuild(store, projection, verify=True)
            assert rebuilt.differences == [], (
                f"{service}.{projection.table} differs from its rebuild:"
                f" {rebuilt.differences[:3]}"
            )


async def _check_settlements(client: httpx.AsyncClient, model: LedgerModel
                             ) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Each settlement final with its saga's status, the saga's legs those requested; the
    sagas by settlement id."""
    sagas: dict[str, dict[str, Any]] = {}
    for settlement in model.settlements.values():
        path = f"/v1/{settlement.kind}s/{settlement.settlement_id}"
        body = expect(await client.get(path), 200)
        assert body["status"] == settlement.status, (body, settlement)
        assert body["status"] in FINAL, body
        saga = expect(await client.get(f"/v1/sagas/{settlement.settlement_id}"), 200)
        assert saga["status"] == body["status"], (saga["status"], body)
        legs = [(leg["from_account"], leg["to_account"], leg["amount_minor"], leg["currency"])
                for leg in saga["legs"]]  # fmt: skip
        requested = [(leg.from_account, leg.to_account, leg.amount_minor, leg.currency)
                     for leg in settlement.legs]  # fmt: skip
        assert legs == requested, f"saga {settlement.settlement_id} settles {legs}, not {requested}"
        sagas[settlement.settlement_id] = saga
    return sagas


def _compensated(saga: dict[str, Any], step: str) -> bool:
    """Whether the saga's compensation `step` was answered."""
    return any(s["step"] == step and s["is_compensation"] and s["outcome"] == "succeeded"
               for s in saga["steps"])  # fmt: skip


async def _check_accounts(client: httpx.AsyncClient, model: LedgerModel) -> None:
    """Each account over HTTP equals the model, and its entries add up to its balance."""
    for account in model.accounts.values():
        body = expect(await client.get(f"/v1/accounts/{account.account_id}"), 200)
        currency = account.currency
        assert minor(body["balance"], currency) == account.balance_minor, (body, account)
        assert minor(body["available"], currency) == account.balance_minor, body
        assert minor(body["pending_debits"], currency) == 0, body
        assert minor(body["pending_credits"], currency) == 0, body
        entries = await _entries(client, account.account_id)
        total = sum(minor(e["amount"], currency) for e in entries)
        assert total == account.balance_minor, f"entries of {account.account_id} sum to {total}"
        if entries:
            assert minor(entries[-1]["balance_after"], currency) == account.balance_minor
        moved = [e for e in entries if e["transfer_id"] is not None]
        assert len(moved) == model.completed_legs_of(account.account_id), (
            f"{account.account_id}: {len(moved)} settlement entries"
        )
        for entry in moved:
            assert model.settlements[entry["transfer_id"]].status == "completed", entry


async def _entries(client: httpx.AsyncClient, account_id: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 500} | ({"cursor": cursor} if cursor else {})
        page = expect(await client.get(f"/v1/accounts/{account_id}/entries", params=params),
                      200)  # fmt: skip
        entries.extend(page["items"])
        cursor = page["next"]
        if not cursor:
            return entries


async def _check_holds(system: SystemUnderTest, model: LedgerModel,
                       sagas: dict[str, dict[str, Any]]) -> None:  # fmt: skip
    """No hold of a finished settlement is open; a completed one's are all posted, and
    nothing of a rejected or failed one was posted. A saga that voided its reserve ended
    both holds of every leg on every account there is (voided, or cancelled so that a late
    reserve is refused): a void covers all the legs, not some."""
    store = system.store("account")
    rows = await store.pool.fetch(
        f"select hold_id, transfer_id, status from {store.schema}.holds"
        " where transfer_id = any($1::text[])",
        list(model.settlements),
    )
    by_settlement: dict[str, list[str]] = {}
    status_of: dict[str, str] = {}
    for row in rows:
        by_settlement.setdefault(row["transfer_id"], []).append(row["status"])
        status_of[row["hold_id"]] = row["status"]
    for settlement_id, settlement in model.settlements.items():
        statuses = by_settlement.get(settlement_id, [])
        assert "open" not in statuses, f"{settlement_id} ({settlement.status}) left a hold open"
        if settlement.status == "completed":
            assert statuses == ["posted"] * 2 * len(settlement.legs), (settlement, statuses)
            continue
        assert "posted" not in statuses, (settlement, statuses)
        if not _compensated(sagas[settlement_id], "void"):
            continue
        for leg in sagas[settlement_id]["legs"]:
            for side, account_id in ((HoldSide.DEBIT, leg["from_account"]),
                                     (HoldSide.CREDIT, leg["to_account"])):  # fmt: skip
                if account_id not in model.accounts:
                    continue
                held = hold_id(settlement_id, leg["leg_id"], side)
                assert status_of.get(held) in ("voided", "cancelled"), (
                    f"{settlement_id} ({settlement.status}) was voided, but its hold {held}"
                    f" is {status_of.get(held, 'not there')}"
                )


async def _check_risk(client: httpx.AsyncClient, model: LedgerModel) -> None:
    """No exposure left open once every saga has ended."""
    for account_id in model.accounts:
        response = await client.get(f"/v1/risk/accounts/{account_id}")
        if response.status_code == 404:
            continue  # risk has not seen it yet, so it has approved nothing from it
        body = expect(response, 200)
        assert Decimal(body["open_exposure"]) == 0, f"exposure left open: {body}"


async def _check_risk_decisions(client: httpx.AsyncClient, model: LedgerModel,
                                sagas: dict[str, dict[str, Any]]) -> None:  # fmt: skip
    """Risk decided on what moved: every leg of a completed settlement was approved on its
    payer, for exactly the leg's amount, within the per-movement limit in force then, and
    never refused; a released or refused leg is not what the ledger completed."""
    decisions: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for account_id in model.accounts:
        for decision in await _decisions(client, account_id):
            decisions.setdefault((decision["transfer_id"], decision["leg_id"]), []
                                 ).append(decision)  # fmt: skip
    for settlement_id, settlement in model.settlements.items():
        if settlement.status != "completed":
            continue
        for leg in sagas[settlement_id]["legs"]:
            found = decisions.get((settlement_id, leg["leg_id"]), [])
            where = f"{settlement.kind} {settlement_id} leg {leg['leg_id']}"
            refused = [d for d in found if d["outcome"] != "approved"]
            assert not refused, f"{where} completed though risk refused it: {refused}"
            assert found, f"{where} completed with no approval of risk on its payer"
            currency = leg["currency"]
            for decision in found:
                assert decision["account_id"] == leg["from_account"], (where, decision)
                assert minor(decision["amount"], currency) == leg["amount_minor"], (
                    f"{where} moved {leg['amount_minor']} minor units, risk approved"
                    f" {decision['amount']} {currency}"
                )
                limit = decision["limits"]["max_transfer"]
                assert limit is None or minor(limit, currency) >= leg["amount_minor"], (
                    f"{where} moved {leg['amount_minor']} minor units over the payer's limit"
                    f" {limit} {currency}: {decision}"
                )


async def _decisions(client: httpx.AsyncClient, account_id: str) -> list[dict[str, Any]]:
    decisions: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"account": account_id, "limit": 500}
        if cursor:
            params["cursor"] = cursor
        page = expect(await client.get("/v1/risk/decisions", params=params), 200)
        decisions.extend(page["items"])
        cursor = page["next"]
        if not cursor:
            return decisions
