"""The risk API over HTTP, against real PostgreSQL and NATS: limits in the account's currency
with the settings' defaults where unset, blocking, the account's exposure and outflow, the
decisions listing, and every refusal as problem+json."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import nats
import orjson
import pytest

from ledger.consumers import ConsumedEvent
from ledger.host import ServiceHost, running
from ledger.http import create_app
from ledger.settings import Settings
from risk_service import domain, repository
from risk_service.account_view import apply_account_event
from risk_service.api import default_limits
from risk_service.app import RiskService
from risk_service.domain import AccountView, MovementRequest
from tests.integration.authorized import authorized_client

PROBLEM = "application/problem+json"
DEFAULT_DAILY_OUTFLOW_MINOR = 500_000


@pytest.fixture(scope="module")
async def host(database_url: str, nats_url: str, pool: asyncpg.Pool) -> AsyncIterator[ServiceHost]:
    settings = Settings(
        database_url=database_url, nats_url=nats_url, schema_prefix=f"t{uuid.uuid4().hex[:8]}_",
        risk_default_daily_outflow_minor=DEFAULT_DAILY_OUTFLOW_MINOR,
        risk_max_movements_per_minute=60,
    )
    async with running(ServiceHost(settings, [RiskService()])) as started:
        yield started
    await pool.execute(f"drop schema {settings.schema_for('risk')} cascade")
    # The account-view durable outlives the host by design; a test's must not outlive it.
    connection = await nats.connect(nats_url)
    try:
        await connection.jetstream().delete_consumer(
            settings.events_stream, f"{settings.schema_for('risk')}-accounts"
        )
    finally:
        await connection.close()


@pytest.fixture(scope="module")
async def client(host: ServiceHost) -> AsyncIterator[httpx.AsyncClient]:
    async with authorized_client(create_app(host, manage_host=False)) as created:
        yield created


def an_id(prefix: str = "acc") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def account_event(account_id: str, event_type: str, version: int, **data: Any) -> ConsumedEvent:
    event_id = str(uuid.uuid4())
    return ConsumedEvent(
        event_id=event_id, stream_id=f"account-{account_id}", stream_version=version,
        event_type=event_type, data=data, metadata={}, recorded_at=datetime.now(UTC),
        global_position=1, subject=f"ledger.account.account.{event_type}", message_id=event_id,
        delivery_count=1,
    )


async def known_account(host: ServiceHost, currency: str = "USD") -> str:
    """An account risk has seen opened, as its account-view consumer would record it."""
    account_id = an_id()
    store = host.runtimes["risk"].store
    async with store.pool.acquire() as connection:
        opened = account_event(account_id, "AccountOpened", 1, currency=currency)
        await apply_account_event(connection, store.schema, opened)
    return account_id


async def decide(host: ServiceHost, account_id: str, decision: repository.Decision) -> None:
    async with host.runtimes["risk"].store.unit_of_work() as unit:
        await repository.decide_and_save(unit, account_id, decision)


async def assess(
    host: ServiceHost, account_id: str, amount_minor: int, *, payee_known: bool = True
) -> str:
    """Assess a movement out of `account_id` (USD); returns its transfer id."""
    transfer_id = an_id("tr")
    payer = AccountView(account_id, "USD", "open")
    payee = AccountView("payee", "USD", "open") if payee_known else None
    movement = MovementRequest(transfer_id, "leg-1", amount_minor, "USD", payer, payee)
    defaults = default_limits(host.settings)
    await decide(host, account_id,
                 lambda state: domain.assess(state, movement, defaults, datetime.now(UTC)))
    return transfer_id


def assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["code"] == code


# --- reading an account ----------------------------------------------------------------


async def test_an_account_without_limits_shows_the_defaults(
    client: httpx.AsyncClient, host: ServiceHost
) -> None:
    account_id = await known_account(host)

    response = await client.get(f"/v1/risk/accounts/{account_id}")

    assert response.status_code == 200, response.text
    assert response.json() == {
        "account_id": account_id, "currency": "USD", "status": "open", "is_blocked": False,
        "blocked_reason": None,
        "limits": {"max_transfer": None, "daily_outflow": "5000.00", "max_open_exposure": None,
                   "max_movements_per_minute": 60},
        "defaulted": ["max_transfer", "daily_outflow", "max_open_exposure",
                      "max_movements_per_minute"],
        "open_exposure": "0.00", "outflow_24h": "0.00", "movements_last_minute": 0, "version": 0,
    }


async def test_an_account_risk_has_never_seen_is_404(client: httpx.AsyncClient) -> None:
    account_id = an_id()

    responses = [
        await client.get(f"/v1/risk/accounts/{account_id}"),
        await client.put(f"/v1/risk/accounts/{account_id}/limits", json={"max_transfer": "1"}),
        await client.post(f"/v1/risk/accounts/{account_id}/block", json={"reason": "x"}),
        await client.post(f"/v1/risk/accounts/{account_id}/unblock", json={"reason": "x"}),
    ]

    for response in responses:
        assert_problem(response, 404, "unknown_account")


async def test_open_exposure_and_outflow_show_in_the_accounts_currency(
    client: httpx.AsyncClient, host: ServiceHost
) -> None:
    account_id = await known_account(host)
    committed = await assess(host, account_id, 1_050)
    await assess(host, account_id, 20_000)
    await decide(host, account_id,
                 lambda state: domain.commit(state, committed, "leg-1", datetime.now(UTC)))

    account = (await client.get(f"/v1/risk/accounts/{account_id}")).json()

    assert account["open_exposure"] == "200.00"
    assert account["outflow_24h"] == "10.50"
    assert account["movements_last_minute"] == 2
    assert account["version"] == 3


async def test_an_account_the_consumer_saw_opened_over_jetstream_becomes_known(
    client: httpx.AsyncClient, host: ServiceHost
) -> None:
    account_id = an_id()
    event = account_event(account_id, "AccountOpened", 1, currency="JPY")
    body = {"event_id": event.event_id, "stream_id": event.stream_id, "stream_version": 1,
            "event_type": event.event_type, "data": event.data, "metadata": {},
            "recorded_at": event.recorded_at.isoformat(), "global_position": 1}
    js = host.runtimes["risk"].js

    await js.publish(event.subject, orjson.dumps(body),
                     headers={"Nats-Msg-Id": event.event_id}, stream=host.settings.events_stream)
    response = await eventually_found(client, f"/v1/risk/accounts/{account_id}")

    assert response.json()["currency"] == "JPY"
    assert response.json()["limits"]["daily_outflow"] == "500000"


async def eventually_found(client: httpx.AsyncClient, path: str) -> httpx.Response:
    for _ in range(600):
        response = await client.get(path)
        if response.status_code != 404:
            return response
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} stayed 404")


# --- limits ----------------------------------------------------------------------------


async def test_set_limits_read_back_as_decimal_strings_with_defaults_where_unset(
    client: httpx.AsyncClient, host: ServiceHost
) -> None:
    account_id = await known_account(host)
    body = {"max_transfer": "100.50", "max_open_exposure": "0", "max_movements_per_minute": 5}

    put = await client.put(f"/v1/risk/accounts/{account_id}/limits", json=body)
    got = await client.get(f"/v1/risk/accounts/{account_id}")

    assert put.status_code == 200, put.text
    assert got.json() == put.json()
    assert got.json()["limits"] == {
        "max_transfer": "100.50", "daily_outflow": "5000.00", "max_open_exposure": "0.00",
        "max_movements_per_minute": 5,
    }
    assert got.json()["defaulted"] == ["daily_outflow"]
    assert got.json()["version"] == 1


async def test_putting_limits_replaces_them_and_an_absent_one_returns_to_the_default(
    client: httpx.AsyncClient, host: ServiceHost
) -> None:
    account_id = await known_account(host)
    path = f"/v1/risk/accounts/{account_id}/limits"
    await client.put(path, json={"max_transfer": "100", "daily_outflow": "300"})

    response = await client.put(path, json={"daily_outflow": "250.5", "max_transfer": None})

    assert response.json()["limits"]["max_transfer"] is None
    assert response.json()["limits"]["daily_outflow"] == "250.50"
    assert response.json()["defaulted"] == [
        "max_transfer", "max_open_exposure", "max_movements_per_minute"
    ]


async def test_putting_the_same_limits_again_changes_nothing(
    client: httpx.AsyncClient, host: ServiceHost
) -> None:
    account_id = await known_account(host)
    path = f"/v1/risk/accounts/{account_id}/limits"

    first = await client.put(path, json={"max_transfer": "7"})
    again = await client.put(path, json={"max_transfer": "7.00"})

    assert first.json()["version"] == again.json()["version"] == 1


async def test_limits_are_read_in_the_accounts_currency(
    client: httpx.AsyncClient, host: ServiceHost
) -> None:
    account_id = await known_account(host, currency="JPY")
    path = f"/v1/risk/accounts/{account_id}/limits"

    accepted = await client.put(path, json={"max_transfer": "1500"})
    refused = await client.put(path, json={"max_transfer": "15.5"})

    assert accepted.json()["limits"]["max_transfer"] == "1500"
    assert_problem(refused, 422, "invalid_amount")
    assert "JPY has 0 decimals" in refused.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [{"max_transfer": "-1"}, {"max_transfer": "1.234"}, {"daily_outflow": "12,5"},
     {"max_open_exposure": "1e3"}, {"max_transfer": "0.000"}, {"max_transfer": "99999999999999"}],
)
async def test_a_malformed_limit_is_422(
    client: httpx.AsyncClient, host: ServiceHost, body: dict[str, Any]
) -> None:
    account_id = await known_account(host)

    response = await client.put(f"/v1/risk/accounts/{account_id}/limits", json=body)

    assert_problem(response, 422, "invalid_amount")


@pytest.mark.parametrize(
    "body",
    [{"max_transfer": "1", "per_day": "2"}, {"max_transfer": 100},
     {"max_movements_per_minute": 0}, {"max_movements_per_minute": "ten"}],
)
async def test_an_unknown_or_mistyped_field_is_422(
    client: httpx.AsyncClient, host: ServiceHost, body: dict[str, Any]
) -> None:
    account_id = await known_account(host)

    response = await client.put(f"/v1/risk/accounts/{account_id}/limits", json=body)

    assert_problem(response, 422, "validation_failed")


# --- blocking --------------------------------------------------------------------------


async def test_blocking_then_unblocking_an_account(
    client: httpx.AsyncClient, host: ServiceHost
) -> None:
    account_id = await known_account(host)
    base = f"/v1/risk/accounts/{account_id}"

    blocked = await client.post(f"{base}/block", json={"reason": "fraud review"})
    blocked_again = await client.post(f"{base}/block", json={"reason": "another"})
    refused = await assess(host, account_id, 100)
    unblocked = await client.post(f"{base}/unblock", json={"reason": "cleared"})
    approved = await assess(host, account_id, 100)
    decisions = (await client.get("/v1/risk/decisions", params={"account": account_id})).json()

    assert blocked.status_code == 200, blocked.text
    assert (blocked.json()["is_blocked"], blocked.json()["blocked_reason"]) == (
        True, "fraud review")
    assert blocked_again.json() == blocked.json()
    assert (unblocked.json()["is_blocked"], unblocked.json()["blocked_reason"]) == (False, None)
    assert [(d["transfer_id"], d["outcome"], d["reason"]) for d in decisions["items"]] == [
        (refused, "refused", "account_blocked"), (approved, "approved", None)
    ]


async def test_block_needs_a_reason(client: httpx.AsyncClient, host: ServiceHost) -> None:
    account_id = await known_account(host)

    missing = await client.post(f"/v1/risk/accounts/{account_id}/block", json={})
    empty = await client.post(f"/v1/risk/accounts/{account_id}/block", json={"reason": ""})

    assert_problem(missing, 422, "validation_failed")
    assert_problem(empty, 422, "validation_failed")


# --- decisions -------------------------------------------------------------------------


async def test_decisions_filter_by_account_and_outcome(
    client: httpx.AsyncClient, host: ServiceHost
) -> None:
    account_id = await known_account(host)
    await client.put(f"/v1/risk/accounts/{account_id}/limits", json={"max_transfer": "10"})
    approved = await assess(host, account_id, 1_000)
    refused = await assess(host, account_id, 1_001)
    unknown_payee = await assess(host, account_id, 5, payee_known=False)

    response = await client.get(
        "/v1/risk/decisions", params={"account": account_id, "outcome": "refused"}
    )

    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert [(d["transfer_id"], d["reason"]) for d in items] == [
        (refused, "limit_exceeded"), (unknown_payee, "unknown_account")
    ]
    assert items[0] | {"position": None, "decided_at": None, "detail": None} == {
        "position": None, "account_id": account_id, "transfer_id": refused, "leg_id": "leg-1",
        "outcome": "refused", "reason": "limit_exceeded", "detail": None, "amount": "10.01",
        "currency": "USD", "decided_at": None,
        "limits": {"max_transfer": "10.00", "daily_outflow": "5000.00",
                   "max_open_exposure": None, "max_movements_per_minute": 60},
    }
    assert response.json()["next"] is None
    approvals = await client.get(
        "/v1/risk/decisions", params={"account": account_id, "outcome": "approved"}
    )
    assert [d["transfer_id"] for d in approvals.json()["items"]] == [approved]


async def test_decisions_page_with_a_cursor_until_next_is_null(
    client: httpx.AsyncClient, host: ServiceHost
) -> None:
    account_id = await known_account(host)
    transfers = [await assess(host, account_id, 1 + n) for n in range(5)]
    seen: list[str] = []
    params: dict[str, Any] = {"account": account_id, "limit": 2}

    pages = 0
    while True:
        page = (await client.get("/v1/risk/decisions", params=params)).json()
        pages += 1
        seen += [d["transfer_id"] for d in page["items"]]
        if page["next"] is None:
            break
        params["cursor"] = page["next"]

    assert seen == transfers
    assert pages == 3


async def test_a_decision_is_listed_only_once_no_earlier_transaction_can_commit_before_it(
    client: httpx.AsyncClient, host: ServiceHost
) -> None:
    """The list pages in commit order under the xmin rule: while a transaction that began
    before a decision is still open, it could commit a decision before that one, so a client
    following the list must not be shown it yet."""
    account_id = await known_account(host)
    store = host.runtimes["risk"].store
    async with store.pool.acquire() as connection, connection.transaction():
        await connection.fetchval("select pg_current_xact_id()")  # an open writer
        decided = await assess(host, account_id, 1)
        while_open = await client.get("/v1/risk/decisions", params={"account": account_id})

    after = await client.get("/v1/risk/decisions", params={"account": account_id})
    assert while_open.json() == {"items": [], "next": None}
    assert [d["transfer_id"] for d in after.json()["items"]] == [decided]


@pytest.mark.parametrize(
    "params",
    [{"cursor": "not-a-cursor"}, {"outcome": "maybe"}, {"limit": 0}, {"limit": 501},
     {"account": "no spaces"}],
)
async def test_a_malformed_decisions_query_is_422(
    client: httpx.AsyncClient, params: dict[str, Any]
) -> None:
    response = await client.get("/v1/risk/decisions", params=params)

    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
