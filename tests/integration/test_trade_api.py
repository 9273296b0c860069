"""The trade API over HTTP, against real PostgreSQL and NATS: requesting transfers and trades
once per Idempotency-Key, every refusal as problem+json, reads and lists, the saga's
complete/reject/fail commands, `?wait=N`, and the saga's steps."""

from __future__ import annotations

import asyncio
import base64
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import nats
import orjson
import pytest
from nats.aio.client import Client

from eventstore import NO_STREAM
from ledger.bus import connect, event_subject
from ledger.commands import CommandClient, CommandRefused
from ledger.host import ServiceHost, running
from ledger.http import create_app
from ledger.settings import Settings
from tests.integration.authorized import authorized_client
from trade_service.app import TradeService
from trade_service.contracts import (
    CompleteSettlement,
    FailSettlement,
    RejectSettlement,
    SettlementOutcome,
    SettlementStatus,
)
from trade_service.domain import SettlementKind
from trade_service.domain import request_transfer as request_transfer_events
from trade_service.events import stream_of, to_new_event

PROBLEM = "application/problem+json"
COMMAND_NAME = f"trade-{secrets.token_hex(4)}"


@pytest.fixture(scope="module")
async def host(database_url: str, nats_url: str, pool: asyncpg.Pool) -> AsyncIterator[ServiceHost]:
    settings = Settings(
        database_url=database_url, nats_url=nats_url, schema_prefix=f"t{uuid.uuid4().hex[:8]}_",
        instrument_scales={"ACME": 0, "BOND": 2},
    )
    async with running(ServiceHost(settings, [TradeService(command_name=COMMAND_NAME)])
                       ) as started:
        yield started
    await pool.execute(f"drop schema {settings.schema_for('trade')} cascade")
    # The steps durable outlives the host by design; a test's must not outlive it.
    connection = await nats.connect(nats_url)
    try:
        await connection.jetstream().delete_consumer(
            settings.events_stream, f"{settings.schema_for('trade')}-steps"
        )
    finally:
        await connection.close()


@pytest.fixture(scope="module")
async def client(host: ServiceHost) -> AsyncIterator[httpx.AsyncClient]:
    async with authorized_client(create_app(host, manage_host=False)) as created:
        yield created


@pytest.fixture(scope="module")
async def nc(nats_url: str) -> AsyncIterator[Client]:
    connection = await connect([nats_url], "test-trade-api")
    yield connection
    await connection.close()


class Saga:
    """Sends the trade service's commands as the saga would."""

    def __init__(self, nc: Client) -> None:
        self.client = CommandClient(nc, timeout_s=10.0, max_retries=0)

    async def complete(self, transfer_id: str, command_id: uuid.UUID | None = None
                       ) -> SettlementOutcome:
        command = CompleteSettlement(command_id=command_id or uuid.uuid4(),
                                     transfer_id=transfer_id)
        return await self.client.send(f"{COMMAND_NAME}.complete", command, SettlementOutcome)

    async def reject(self, transfer_id: str, reason: str, detail: str | None = None
                     ) -> SettlementOutcome:
        command = RejectSettlement(command_id=uuid.uuid4(), transfer_id=transfer_id,
                                   reason=reason, detail=detail)
        return await self.client.send(f"{COMMAND_NAME}.reject", command, SettlementOutcome)

    async def fail(self, transfer_id: str, reason: str) -> SettlementOutcome:
        command = FailSettlement(command_id=uuid.uuid4(), transfer_id=transfer_id, reason=reason)
        return await self.client.send(f"{COMMAND_NAME}.fail", command, SettlementOutcome)


@pytest.fixture(scope="module")
def saga(nc: Client) -> Saga:
    return Saga(nc)


def a_key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


def an_account() -> str:
    return f"acc-{uuid.uuid4().hex[:12]}"


def a_transfer_body(**fields: Any) -> dict[str, Any]:
    return {"from_account": an_account(), "to_account": an_account(), "amount": "12.34",
            "currency": "USD", **fields}


def a_trade_body(**fields: Any) -> dict[str, Any]:
    return {
        "instrument": "ACME", "quantity": "10", "price": "12.345", "currency": "USD",
        "buyer": {"cash_account": an_account(), "asset_account": an_account()},
        "seller": {"cash_account": an_account(), "asset_account": an_account()}, **fields,
    }


async def request_transfer(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    response = await client.post("/v1/transfers", json=a_transfer_body(**fields),
                                 headers=a_key())
    assert response.status_code == 202, response.text
    created: dict[str, Any] = response.json()
    return created


async def request_trade(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    response = await client.post("/v1/trades", json=a_trade_body(**fields), headers=a_key())
    assert response.status_code == 202, response.text
    created: dict[str, Any] = response.json()
    return created


def assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["code"] == code


async def listed_for(client: httpx.AsyncClient, path: str, account: str) -> list[Any]:
    response = await client.get(path, params={"account": account})
    assert response.status_code == 200, response.text
    items: list[Any] = response.json()["items"]
    return items


# --- transfers ---------------------------------------------------------------------------


async def test_requesting_a_transfer_answers_202_pending_and_appends_its_one_leg(
    client: httpx.AsyncClient, host: ServiceHost
) -> None:
    body = a_transfer_body(reference="rent may")

    response = await client.post("/v1/transfers", json=body, headers=a_key())

    assert response.status_code == 202, response.text
    transfer = response.json()
    assert uuid.UUID(transfer["id"]).version == 4
    assert transfer | {"id": None, "created_at": None, "updated_at": None} == {
        "id": None, "status": "pending", "reason": None, "detail": None,
        "from_account": body["from_account"], "to_account": body["to_account"],
        "amount": "12.34", "currency": "USD", "reference": "rent may", "steps": [],
        "legs": [{"id": "transfer", "from_account": body["from_account"],
                  "to_account": body["to_account"], "amount": "12.34", "currency": "USD"}],
        "created_at": None, "updated_at": None,
    }
    [event] = await host.runtimes["trade"].store.read_stream(f"transfer-{transfer['id']}")
    assert event.event_type == "TransferRequested"
    assert event.data["legs"] == [{
        "leg_id": "transfer", "from_account": body["from_account"],
        "to_account": body["to_account"], "amount_minor": 1234, "currency": "USD",
        "kind": "transfer",
    }]


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"amount": "0"}, "invalid_amount"),
        ({"amount": "-1.00"}, "invalid_amount"),
        ({"amount": "1.001"}, "invalid_amount"),
        ({"amount": "12,00"}, "invalid_amount"),
        ({"amount": "100000000000000.00"}, "invalid_amount"),
        ({"currency": "XXX"}, "unknown_currency"),
        ({"colour": "red"}, "validation_failed"),
        ({"from_account": "not an id"}, "validation_failed"),
    ],
)
async def test_a_transfer_that_is_not_valid_is_422_and_creates_nothing(
    client: httpx.AsyncClient, fields: dict[str, Any], code: str
) -> None:
    body = a_transfer_body(**fields)

    response = await client.post("/v1/transfers", json=body, headers=a_key())

    assert_problem(response, 422, code)
    assert await listed_for(client, "/v1/transfers", body["to_account"]) == []


async def test_a_transfer_to_the_same_account_is_422_and_creates_nothing(
    client: httpx.AsyncClient,
) -> None:
    account = an_account()

    response = await client.post(
        "/v1/transfers", json=a_transfer_body(from_account=account, to_account=account),
        headers=a_key(),
    )

    assert_problem(response, 422, "same_account")
    assert await listed_for(client, "/v1/transfers", account) == []


async def test_a_transfer_without_an_idempotency_key_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/transfers", json=a_transfer_body())

    assert_problem(response, 422, "idempotency_key_required")


async def test_a_repeated_key_returns_the_same_transfer_and_creates_one(
    client: httpx.AsyncClient,
) -> None:
    body, key = a_transfer_body(), a_key()

    first = await client.post("/v1/transfers", json=body, headers=key)
    again = await client.post("/v1/transfers", json=body, headers=key)

    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(await listed_for(client, "/v1/transfers", body["from_account"])) == 1


async def test_a_key_reused_with_another_body_is_422(client: httpx.AsyncClient) -> None:
    body, key = a_transfer_body(), a_key()
    first = await client.post("/v1/transfers", json=body, headers=key)

    other = await client.post("/v1/transfers", json=body | {"amount": "99.00"}, headers=key)

    assert first.status_code == 202
    assert_problem(other, 422, "idempotency_key_reused")
    assert len(await listed_for(client, "/v1/transfers", body["from_account"])) == 1


# --- trades ------------------------------------------------------------------------------


async def test_a_trade_moves_quantity_times_price_against_the_instrument(
    client: httpx.AsyncClient, host: ServiceHost
) -> None:
    body = a_trade_body(quantity="10", price="12.345")
    buyer, seller = body["buyer"], body["seller"]

    response = await client.post("/v1/trades", json=body, headers=a_key())

    assert response.status_code == 202, response.text
    trade = response.json()
    assert trade["status"] == "pending"
    assert (trade["instrument"], trade["quantity"], trade["price"], trade["currency"],
            trade["amount"]) == ("ACME", "10", "12.345", "USD", "123.45")
    assert (trade["buyer"], trade["seller"]) == (buyer, seller)
    assert trade["legs"] == [
        {"id": "cash", "from_account": buyer["cash_account"],
         "to_account": seller["cash_account"], "amount": "123.45", "currency": "USD"},
        {"id": "asset", "from_account": seller["asset_account"],
         "to_account": buyer["asset_account"], "amount": "10", "currency": "ACME"},
    ]
    [event] = await host.runtimes["trade"].store.read_stream(f"trade-{trade['id']}")
    assert event.event_type == "TradeRequested"
    assert [leg["amount_minor"] for leg in event.data["legs"]] == [12345, 10]
    assert event.data["quantity_minor"] == 10


async def test_a_trade_quantity_is_parsed_with_the_instrument_scale(
    client: httpx.AsyncClient,
) -> None:
    trade = await request_trade(client, instrument="BOND", quantity="1.50", price="99.5")

    assert (trade["quantity"], trade["amount"]) == ("1.50", "149.25")
    assert trade["legs"][1]["amount"] == "1.50"


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"quantity": "1.5"}, "invalid_amount"),  # ACME has no decimals
        ({"quantity": "0"}, "invalid_amount"),
        ({"price": "0"}, "invalid_price"),
        ({"price": "-1"}, "invalid_price"),
        ({"quantity": "3", "price": "0.333"}, "inexact_amount"),
        ({"quantity": "1", "price": "0.001"}, "inexact_amount"),
        ({"instrument": "NOPE"}, "unknown_instrument"),
        ({"currency": "XXX"}, "unknown_currency"),
        ({"instrument": "USD"}, "same_asset"),
        ({"venue": "x"}, "validation_failed"),
    ],
)
async def test_a_trade_that_is_not_valid_is_422_and_creates_nothing(
    client: httpx.AsyncClient, fields: dict[str, Any], code: str
) -> None:
    body = a_trade_body(**fields)

    response = await client.post("/v1/trades", json=body, headers=a_key())

    assert_problem(response, 422, code)
    assert await listed_for(client, "/v1/trades", body["buyer"]["cash_account"]) == []


def party(cash_account: str, asset_account: str) -> dict[str, str]:
    return {"cash_account": cash_account, "asset_account": asset_account}


@pytest.mark.parametrize(
    ("buyer", "seller", "code"),
    [
        (party("c", "a1"), party("c", "a2"), "same_account"),
        (party("c1", "a"), party("c2", "a"), "same_account"),
        (party("c1", "c2"), party("c2", "a"), "account_asset_conflict"),
    ],
)
async def test_a_trade_whose_accounts_cannot_settle_is_422(
    client: httpx.AsyncClient, buyer: dict[str, str], seller: dict[str, str], code: str
) -> None:
    response = await client.post("/v1/trades", json=a_trade_body(buyer=buyer, seller=seller),
                                 headers=a_key())

    assert_problem(response, 422, code)


# --- reads -------------------------------------------------------------------------------


async def test_a_transfer_and_a_trade_read_back_as_requested(client: httpx.AsyncClient) -> None:
    transfer = await request_transfer(client)
    trade = await request_trade(client)

    read_transfer = await client.get(f"/v1/transfers/{transfer['id']}")
    read_trade = await client.get(f"/v1/trades/{trade['id']}")

    assert read_transfer.json() == transfer
    assert read_trade.json() == trade


async def test_an_unknown_id_is_404_and_a_transfer_is_no_trade(
    client: httpx.AsyncClient,
) -> None:
    transfer = await request_transfer(client)

    assert_problem(await client.get(f"/v1/transfers/{uuid.uuid4()}"), 404, "unknown_transfer")
    assert_problem(await client.get(f"/v1/trades/{transfer['id']}"), 404, "unknown_transfer")


async def test_lists_filter_by_either_account_and_by_status_newest_first(
    client: httpx.AsyncClient, saga: Saga
) -> None:
    shared = an_account()
    outgoing = await request_transfer(client, from_account=shared)
    incoming = await request_transfer(client, to_account=shared)
    await request_transfer(client)
    await saga.complete(incoming["id"])

    everything = await listed_for(client, "/v1/transfers", shared)
    completed = await client.get("/v1/transfers", params={"account": shared,
                                                          "status": "completed"})
    trades = await listed_for(client, "/v1/trades", shared)

    assert [item["id"] for item in everything] == [incoming["id"], outgoing["id"]]
    assert [item["id"] for item in completed.json()["items"]] == [incoming["id"]]
    assert trades == []


async def test_trades_list_by_any_of_their_four_accounts(client: httpx.AsyncClient) -> None:
    trade = await request_trade(client)

    for party in ("buyer", "seller"):
        for account in trade[party].values():
            assert [t["id"] for t in await listed_for(client, "/v1/trades", account)] == [
                trade["id"]]


async def test_a_list_pages_with_its_cursor(client: httpx.AsyncClient) -> None:
    shared = an_account()
    ids = [(await request_transfer(client, from_account=shared))["id"] for _ in range(5)]

    seen: list[str] = []
    cursor: str | None = None
    for _ in range(3):
        params: dict[str, str | int] = {"account": shared, "limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        page = (await client.get("/v1/transfers", params=params)).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next"]
    assert seen == list(reversed(ids))
    assert cursor is None


async def test_a_request_that_commits_late_is_listed_above_what_a_client_has_seen(
    host: ServiceHost, client: httpx.AsyncClient
) -> None:
    """Lists page in commit order under the xmin rule: a request whose transaction is still
    open holds back the requests that took their transaction ids after it, so a client that
    follows the list from its top until an id it knows never passes one that commits late."""
    shared = an_account()
    first = (await request_transfer(client, from_account=shared))["id"]
    late = str(uuid.uuid4())
    [requested] = request_transfer_events(late, shared, an_account(), 100, "USD", None,
                                          datetime.now(UTC))  # fmt: skip
    async with host.runtimes["trade"].store.unit_of_work() as unit:
        await unit.append(stream_of(SettlementKind.TRANSFER, late), [to_new_event(requested)],
                          NO_STREAM)  # fmt: skip
        later = (await request_transfer(client, from_account=shared))["id"]
        while_open = [item["id"] for item in await listed_for(client, "/v1/transfers", shared)]

    after = [item["id"] for item in await listed_for(client, "/v1/transfers", shared)]
    assert while_open == [first]
    assert after == [later, late, first]


async def test_a_cursor_given_out_before_lists_paged_in_commit_order_still_pages(
    host: ServiceHost, client: httpx.AsyncClient
) -> None:
    shared = an_account()
    oldest, middle, newest = [(await request_transfer(client, from_account=shared))["id"]
                              for _ in range(3)]  # fmt: skip
    store = host.runtimes["trade"].store
    position = await store.pool.fetchval(
        f"select position from {store.schema}.settlements where transfer_id = $1", newest
    )
    old_cursor = base64.urlsafe_b64encode(orjson.dumps(["transfers", position])).decode()

    page = await client.get("/v1/transfers", params={"account": shared, "cursor": old_cursor})

    assert page.status_code == 200, page.text
    assert [item["id"] for item in page.json()["items"]] == [middle, oldest]


async def test_a_cursor_of_another_list_is_422(client: httpx.AsyncClient) -> None:
    shared = an_account()
    for _ in range(2):
        await request_trade(client, buyer={"cash_account": shared, "asset_account": an_account()})
    page = (await client.get("/v1/trades", params={"account": shared, "limit": 1})).json()

    response = await client.get("/v1/transfers", params={"cursor": page["next"]})

    assert_problem(response, 422, "invalid_cursor")


# --- the saga's commands -----------------------------------------------------------------


async def test_complete_completes_and_is_idempotent(
    client: httpx.AsyncClient, saga: Saga
) -> None:
    transfer = await request_transfer(client)
    command_id = uuid.uuid4()

    first = await saga.complete(transfer["id"], command_id)
    replayed = await saga.complete(transfer["id"], command_id)
    again = await saga.complete(transfer["id"])

    assert first.status == replayed.status == again.status == SettlementStatus.COMPLETED
    read = (await client.get(f"/v1/transfers/{transfer['id']}")).json()
    assert (read["status"], read["reason"]) == ("completed", None)
    assert read["updated_at"] > read["created_at"]


async def test_reject_records_the_reason_and_refuses_a_later_complete(
    client: httpx.AsyncClient, saga: Saga
) -> None:
    trade = await request_trade(client)

    rejected = await saga.reject(trade["id"], "unknown_account", "account x does not exist")
    with pytest.raises(CommandRefused) as refused:
        await saga.complete(trade["id"])

    assert rejected.status == SettlementStatus.REJECTED
    assert refused.value.code == "already_final"
    assert refused.value.details["status"] == "rejected"
    read = (await client.get(f"/v1/trades/{trade['id']}")).json()
    assert (read["status"], read["reason"], read["detail"]) == (
        "rejected", "unknown_account", "account x does not exist")


async def test_fail_records_the_reason_and_a_reject_after_it_is_refused(
    client: httpx.AsyncClient, saga: Saga
) -> None:
    transfer = await request_transfer(client)

    failed = await saga.fail(transfer["id"], "deadline_exceeded")
    with pytest.raises(CommandRefused) as refused:
        await saga.reject(transfer["id"], "insufficient_funds")

    assert failed.status == SettlementStatus.FAILED
    assert refused.value.code == "already_final"
    read = (await client.get(f"/v1/transfers/{transfer['id']}")).json()
    assert (read["status"], read["reason"]) == ("failed", "deadline_exceeded")


async def test_a_command_for_an_unknown_transfer_is_refused(saga: Saga) -> None:
    with pytest.raises(CommandRefused) as refused:
        await saga.complete(str(uuid.uuid4()))

    assert refused.value.code == "unknown_transfer"


# --- waiting for the outcome ---------------------------------------------------------------


async def test_a_wait_returns_once_the_transfer_completes(
    client: httpx.AsyncClient, saga: Saga
) -> None:
    transfer = await request_transfer(client)
    waiting = asyncio.create_task(
        client.get(f"/v1/transfers/{transfer['id']}", params={"wait": 2})
    )
    await asyncio.sleep(0.2)  # let the read look once and start waiting

    await saga.complete(transfer["id"])
    response = await waiting

    assert response.status_code == 200
    assert response.json()["status"] == "completed"


async def test_a_wait_answers_pending_when_no_outcome_comes(client: httpx.AsyncClient) -> None:
    trade = await request_trade(client)

    response = await client.get(f"/v1/trades/{trade['id']}", params={"wait": 0.3})

    assert response.status_code == 200
    assert response.json()["status"] == "pending"


@pytest.mark.parametrize("wait", ["-1", "31", "soon"])
async def test_a_wait_beyond_its_bounds_is_422(client: httpx.AsyncClient, wait: str) -> None:
    transfer = await request_transfer(client)

    response = await client.get(f"/v1/transfers/{transfer['id']}", params={"wait": wait})

    assert_problem(response, 422, "validation_failed")


# --- the saga's steps ----------------------------------------------------------------------


async def publish_saga_event(
    nc: Client, transfer_id: str, version: int, event_type: str, data: dict[str, Any]
) -> None:
    """Publish a saga event as the saga service's relay would."""
    event_id = str(uuid.uuid4())
    body = {
        "event_id": event_id, "stream_id": f"saga-{transfer_id}", "stream_version": version,
        "event_type": event_type, "data": data, "metadata": {},
        "recorded_at": datetime.now(UTC).isoformat(), "global_position": version,
    }
    await nc.jetstream().publish(event_subject("saga", "saga", event_type), orjson.dumps(body),
                                 headers={"Nats-Msg-Id": event_id})


async def test_the_saga_steps_show_in_the_transfer_in_order_once_each(
    client: httpx.AsyncClient, nc: Client
) -> None:
    transfer = await request_transfer(client)
    transfer_id = transfer["id"]
    command_id = str(uuid.uuid4())

    await publish_saga_event(nc, transfer_id, 2, "StepStarted", {
        "step": "assess", "command_id": command_id, "attempt": 1, "is_compensation": False})
    await publish_saga_event(nc, transfer_id, 3, "StepRefused", {
        "step": "assess", "code": "limit_exceeded", "detail": "over the daily limit"})
    await publish_saga_event(nc, transfer_id, 2, "StepStarted", {  # redelivered
        "step": "assess", "command_id": command_id, "attempt": 1, "is_compensation": False})

    steps: list[Any] = []
    async with asyncio.timeout(10):
        while len(steps) < 2:
            await asyncio.sleep(0.05)
            steps = (await client.get(f"/v1/transfers/{transfer_id}")).json()["steps"]
    assert [(s["seq"], s["step"], s["outcome"], s["detail"]) for s in steps] == [
        (2, "assess", "started", "attempt 1"),
        (3, "assess", "refused", "limit_exceeded: over the daily limit"),
    ]
