"""Idempotency keys are each principal's own, and one key is one movement in the trade
service whichever of its endpoints it is sent to; answers stored before keys were each
principal's own are still found (a client retrying across the upgrade moves money once)."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any, Final

import httpx
import orjson
import pytest
from fastapi import FastAPI

from eventstore import StoredResponse, store_response
from ledger.auth import Scope
from ledger.host import ServiceHost, running
from ledger.http import create_app
from ledger.idempotency import fingerprint
from ledger.problems import PROBLEM_MEDIA_TYPE
from ledger.services import available_services
from ledger.settings import Settings
from tests.integration.authorized import authorized_client
from tests.integration.whole_ledger import forget, ledger_settings
from trade_service.views import TransferRequest

TOKEN: Final = secrets.token_hex(4)
CUSTOMER: Final = (Scope.ACCOUNTS_READ, Scope.ACCOUNTS_WRITE, Scope.TRANSFERS_WRITE)


@pytest.fixture(scope="module")
def settings(database_url: str, nats_url: str) -> Settings:
    return ledger_settings(database_url, nats_url, f"k{TOKEN}_")


@pytest.fixture(scope="module")
async def host(settings: Settings) -> AsyncIterator[ServiceHost]:
    async with running(ServiceHost(settings, list(available_services().values()))) as started:
        yield started
    await forget(settings)


@pytest.fixture(scope="module")
def app(host: ServiceHost) -> FastAPI:
    return create_app(host, manage_host=False)


@pytest.fixture(scope="module")
async def admin(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with authorized_client(app) as created:
        yield created


async def opened(admin: httpx.AsyncClient, owner: str, currency: str = "USD") -> str:
    response = await admin.post("/v1/accounts", json={"owner": owner, "currency": currency})
    assert response.status_code == 201, response.text
    account_id: str = response.json()["id"]
    return account_id


def a_transfer(payer: str, payee: str, amount: str = "1.00") -> dict[str, Any]:
    return {"from_account": payer, "to_account": payee, "amount": amount, "currency": "USD"}


async def test_one_owners_key_neither_answers_nor_refuses_another_owners_request(
    app: FastAPI, admin: httpx.AsyncClient
) -> None:
    alice = [await opened(admin, "alice"), await opened(admin, "alice")]
    bob = [await opened(admin, "bob"), await opened(admin, "bob")]
    shared = {"Idempotency-Key": f"first-transfer-{TOKEN}"}  # the README's kind of key

    async with authorized_client(app, CUSTOMER, subject="alice", owner="alice") as client:
        first = await client.post("/v1/transfers", json=a_transfer(*alice), headers=shared)
        again = await client.post("/v1/transfers", json=a_transfer(*alice), headers=shared)
    async with authorized_client(app, CUSTOMER, subject="bob", owner="bob") as client:
        second = await client.post("/v1/transfers", json=a_transfer(*bob), headers=shared)
        opening = await client.post("/v1/accounts", json={"owner": "bob", "currency": "USD"},
                                    headers=shared)  # fmt: skip

    assert (first.status_code, second.status_code, opening.status_code) == (202, 202, 201)
    assert again.json()["id"] == first.json()["id"]
    assert second.json()["id"] != first.json()["id"]
    assert second.json()["from_account"] == bob[0]


async def test_a_key_sent_to_transfers_then_trades_is_refused_there(
    admin: httpx.AsyncClient,
) -> None:
    cash = [await opened(admin, "c"), await opened(admin, "c")]
    assets = [await opened(admin, "c", "ACME"), await opened(admin, "c", "ACME")]
    shared = {"Idempotency-Key": str(uuid.uuid4())}

    transfer = await admin.post("/v1/transfers", json=a_transfer(*cash), headers=shared)
    trade = await admin.post("/v1/trades", headers=shared, json={
        "instrument": "ACME", "quantity": "1", "price": "1.00", "currency": "USD",
        "buyer": {"cash_account": cash[0], "asset_account": assets[0]},
        "seller": {"cash_account": cash[1], "asset_account": assets[1]},
    })  # fmt: skip

    assert transfer.status_code == 202, transfer.text
    assert trade.status_code == 422, trade.text
    assert trade.headers["content-type"] == PROBLEM_MEDIA_TYPE
    assert trade.json()["code"] == "idempotency_key_reused"
    listed = await admin.get("/v1/trades", params={"account": cash[0]})
    assert listed.json()["items"] == []


async def test_an_answer_stored_before_keys_were_each_principals_is_still_replayed(
    host: ServiceHost, admin: httpx.AsyncClient
) -> None:
    # As an earlier version stored it: under the endpoint's scope alone, for anyone.
    payer, payee = await opened(admin, "d"), await opened(admin, "d")
    key, body = str(uuid.uuid4()), a_transfer(payer, payee)
    earlier = {"id": "made-before-the-upgrade", "status": "pending"}
    store = host.runtimes["trade"].store
    validated = TransferRequest.model_validate(body).model_dump(mode="json")  # as fingerprinted
    await store_response(store.pool, store.schema, "transfers", key, StoredResponse(
        fingerprint("POST", "/v1/transfers", validated), 202, earlier))  # fmt: skip

    retried = await admin.post("/v1/transfers", json=body, headers={"Idempotency-Key": key})
    changed = await admin.post("/v1/transfers", json=a_transfer(payer, payee, "2.00"),
                               headers={"Idempotency-Key": key})  # fmt: skip

    assert (retried.status_code, retried.json()) == (202, earlier)
    assert retried.headers["Idempotent-Replayed"] == "true"
    assert changed.status_code == 422
    assert (await admin.get("/v1/transfers", params={"account": payer})).json()["items"] == []


async def test_an_answer_is_mirrored_where_the_previous_version_looks_for_it(
    host: ServiceHost, admin: httpx.AsyncClient
) -> None:
    # A rolling upgrade runs both versions side by side: a retry that reaches a replica of
    # the previous version, which looks under the endpoint's scope alone, must replay.
    payer, payee = await opened(admin, "e"), await opened(admin, "e")
    key = str(uuid.uuid4())

    first = await admin.post("/v1/transfers", json=a_transfer(payer, payee),
                             headers={"Idempotency-Key": key})  # fmt: skip

    store = host.runtimes["trade"].store
    as_the_previous_version_reads_it = await store.pool.fetchrow(
        f"select status_code, response from {store.schema}.idempotency_keys"
        " where scope = 'transfers' and key = $1", key,
    )  # fmt: skip
    assert as_the_previous_version_reads_it is not None
    assert as_the_previous_version_reads_it["status_code"] == 202
    assert orjson.loads(as_the_previous_version_reads_it["response"])["id"] == first.json()["id"]
