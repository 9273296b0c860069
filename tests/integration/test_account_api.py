"""The account API over HTTP, against real PostgreSQL and NATS: what each endpoint answers,
how money moves once per Idempotency-Key, and every refusal as problem+json."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from account_service.app import AccountService
from ledger.host import ServiceHost, running
from ledger.http import create_app
from ledger.settings import Settings
from tests.integration.authorized import authorized_client

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
async def host(database_url: str, nats_url: str, pool: asyncpg.Pool) -> AsyncIterator[ServiceHost]:
    settings = Settings(
        database_url=database_url, nats_url=nats_url, schema_prefix=f"t{uuid.uuid4().hex[:8]}_",
    )
    async with running(ServiceHost(settings, [AccountService()])) as started:
        yield started
    await pool.execute(f"drop schema {settings.schema_for('account')} cascade")


@pytest.fixture(scope="module")
async def client(host: ServiceHost) -> AsyncIterator[httpx.AsyncClient]:
    async with authorized_client(create_app(host, manage_host=False)) as created:
        yield created


def a_key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


def an_owner() -> str:
    return f"owner-{uuid.uuid4().hex[:12]}"


async def open_account(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    body = {"owner": an_owner(), "currency": "USD", **fields}
    response = await client.post("/v1/accounts", json=body)
    assert response.status_code == 201, response.text
    opened: dict[str, Any] = response.json()
    return opened


async def deposit(client: httpx.AsyncClient, account_id: str, amount: str) -> httpx.Response:
    return await client.post(
        f"/v1/accounts/{account_id}/deposits", json={"amount": amount}, headers=a_key()
    )


async def withdraw(client: httpx.AsyncClient, account_id: str, amount: str) -> httpx.Response:
    return await client.post(
        f"/v1/accounts/{account_id}/withdrawals", json={"amount": amount}, headers=a_key()
    )


async def version_of(client: httpx.AsyncClient, account_id: str) -> int:
    version: int = (await client.get(f"/v1/accounts/{account_id}")).json()["version"]
    return version


def assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["code"] == code
    assert response.json()["status"] == status


# --- opening and reading ---------------------------------------------------------------


async def test_opening_an_account_answers_201_with_the_account(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/v1/accounts", json={"owner": "alice", "currency": "USD", "overdraft_limit": "50.00"}
    )

    assert response.status_code == 201
    account = response.json()
    assert uuid.UUID(account["id"]).version == 4
    assert account | {"id": None, "opened_at": None} == {
        "id": None, "owner": "alice", "currency": "USD", "status": "open", "balance": "0.00",
        "available": "0.00", "pending_debits": "0.00", "pending_credits": "0.00",
        "overdraft_limit": "50.00", "version": 1, "opened_at": None,
    }
    assert account["opened_at"].endswith(("Z", "+00:00"))


async def test_an_opened_account_reads_back_the_same(client: httpx.AsyncClient) -> None:
    opened = await open_account(client, currency="JPY")

    response = await client.get(f"/v1/accounts/{opened['id']}")

    assert response.status_code == 200
    assert response.json() == opened
    assert response.json()["balance"] == "0"


async def test_opening_an_account_twice_with_one_key_opens_one(
    client: httpx.AsyncClient,
) -> None:
    body, key = {"owner": an_owner(), "currency": "EUR"}, a_key()

    first = await client.post("/v1/accounts", json=body, headers=key)
    again = await client.post("/v1/accounts", json=body, headers=key)
    listed = await client.get("/v1/accounts", params={"owner": body["owner"]})

    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(listed.json()["items"]) == 1


@pytest.mark.parametrize(
    ("body", "location"),
    [
        ({"owner": "bob", "currency": "XXX"}, None),
        ({"owner": "bob", "currency": "USD", "overdraft_limit": "-5"}, None),
        ({"owner": "bob", "currency": "USD", "overdraft_limit": "1.001"}, None),
        ({"owner": "bob bob", "currency": "USD"}, ["body", "owner"]),
        ({"owner": "bob", "currency": "USD", "colour": "red"}, ["body", "colour"]),
        ({"currency": "USD"}, ["body", "owner"]),
    ],
)
async def test_opening_refuses_what_is_not_valid_with_422(
    client: httpx.AsyncClient, body: dict[str, Any], location: list[str] | None
) -> None:
    response = await client.post("/v1/accounts", json=body)

    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    if location is not None:
        assert response.json()["errors"][0]["location"] == location


async def test_an_unknown_account_is_404_on_every_endpoint(client: httpx.AsyncClient) -> None:
    missing = f"/v1/accounts/{uuid.uuid4()}"

    answers = [
        await client.get(missing),
        await client.get(f"{missing}/entries"),
        await client.get(f"{missing}/balance"),
        await client.get(f"{missing}/balance", params={"as_of": "2024-01-01T00:00:00Z"}),
        await client.get(f"{missing}/events"),
        await client.post(f"{missing}/deposits", json={"amount": "1.00"}, headers=a_key()),
        await client.post(f"{missing}/withdrawals", json={"amount": "1.00"}, headers=a_key()),
        await client.post(f"{missing}/freeze"),
        await client.post(f"{missing}/unfreeze"),
        await client.post(f"{missing}/close"),
    ]

    for response in answers:
        assert_problem(response, 404, "unknown_account")


async def test_the_list_filters_by_owner_currency_and_status_and_pages(
    client: httpx.AsyncClient,
) -> None:
    owner = an_owner()
    usd = [await open_account(client, owner=owner) for _ in range(5)]
    await open_account(client, owner=owner, currency="EUR")
    frozen = await client.post(f"/v1/accounts/{usd[0]['id']}/freeze")

    pages: list[dict[str, Any]] = []
    params: dict[str, Any] = {"owner": owner, "currency": "USD", "limit": 2}
    while True:
        page = (await client.get("/v1/accounts", params=params)).json()
        pages.append(page)
        if page["next"] is None:
            break
        params["cursor"] = page["next"]
    only_frozen = await client.get("/v1/accounts", params={"owner": owner, "status": "frozen"})

    assert [len(page["items"]) for page in pages] == [2, 2, 1]
    listed = [account["id"] for page in pages for account in page["items"]]
    assert listed == sorted(account["id"] for account in usd)
    assert [a["id"] for a in only_frozen.json()["items"]] == [frozen.json()["id"]]


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 501}, {"cursor": "not-a-cursor"}, {"status": "sleeping"}],
)
async def test_the_list_refuses_bad_paging_and_filters_with_422(
    client: httpx.AsyncClient, params: dict[str, Any]
) -> None:
    response = await client.get("/v1/accounts", params=params)

    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM


# --- deposits and withdrawals -------------------------------------------------------------


async def test_deposit_and_withdrawal_answer_the_entry_and_the_new_balances(
    client: httpx.AsyncClient,
) -> None:
    account = await open_account(client)

    deposited = await client.post(
        f"/v1/accounts/{account['id']}/deposits",
        json={"amount": "100.50", "reference": "wire 42"}, headers=a_key(),
    )
    withdrawn = await withdraw(client, account["id"], "30.25")

    assert deposited.status_code == 201
    entry, after = deposited.json()["entry"], deposited.json()["account"]
    assert (entry["kind"], entry["amount"], entry["balance_after"]) == (
        "deposit", "100.50", "100.50",
    )
    assert (entry["reference"], entry["transfer_id"], entry["currency"]) == ("wire 42", None, "USD")
    assert (after["balance"], after["available"], after["version"]) == ("100.50", "100.50", 2)
    assert withdrawn.status_code == 201
    entry, after = withdrawn.json()["entry"], withdrawn.json()["account"]
    assert (entry["kind"], entry["amount"], entry["balance_after"]) == (
        "withdrawal", "-30.25", "70.25",
    )
    assert entry["global_position"] > deposited.json()["entry"]["global_position"]
    assert (after["balance"], after["version"]) == ("70.25", 3)


async def test_a_withdrawal_beyond_the_available_balance_is_409_and_moves_nothing(
    client: httpx.AsyncClient,
) -> None:
    account = await open_account(client)
    await deposit(client, account["id"], "10.00")

    response = await withdraw(client, account["id"], "10.01")

    assert_problem(response, 409, "insufficient_funds")
    problem = response.json()
    assert (problem["needed"], problem["available"], problem["currency"]) == (
        "10.01", "10.00", "USD",
    )
    assert "insufficient funds" in problem["detail"]
    assert problem["instance"] == f"/v1/accounts/{account['id']}/withdrawals"
    assert await version_of(client, account["id"]) == 2


async def test_an_overdraft_lets_the_balance_go_below_zero_down_to_its_limit(
    client: httpx.AsyncClient,
) -> None:
    account = await open_account(client, overdraft_limit="20.00")

    within = await withdraw(client, account["id"], "15.00")
    beyond = await withdraw(client, account["id"], "5.01")

    assert within.status_code == 201
    assert within.json()["account"]["balance"] == "-15.00"
    assert_problem(beyond, 409, "insufficient_funds")
    assert beyond.json()["available"] == "5.00"


@pytest.mark.parametrize(
    "amount",
    ["abc", "0", "0.00", "-1.00", "1.234", "1e3", " 1.00", "10000000000000.01", "", 12.5, None],
)
async def test_an_amount_that_is_not_valid_is_422_and_writes_nothing(
    client: httpx.AsyncClient, amount: Any
) -> None:
    account = await open_account(client)

    response = await client.post(
        f"/v1/accounts/{account['id']}/deposits", json={"amount": amount}, headers=a_key()
    )

    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    assert await version_of(client, account["id"]) == 1


async def test_the_largest_amount_is_accepted_and_one_minor_unit_more_is_not(
    client: httpx.AsyncClient,
) -> None:
    account = await open_account(client)

    largest = await deposit(client, account["id"], "10000000000000.00")
    beyond = await deposit(client, account["id"], "10000000000000.01")

    assert largest.status_code == 201
    assert_problem(beyond, 422, "invalid_amount")
    assert "maximum" in beyond.json()["detail"]


async def test_a_movement_with_an_unknown_field_is_422(client: httpx.AsyncClient) -> None:
    account = await open_account(client)

    response = await client.post(
        f"/v1/accounts/{account['id']}/deposits",
        json={"amount": "1.00", "currency": "USD"}, headers=a_key(),
    )

    assert_problem(response, 422, "validation_failed")
    assert response.json()["errors"][0]["location"] == ["body", "currency"]


# --- idempotency ------------------------------------------------------------------------


async def test_the_same_key_and_body_replays_the_first_answer_and_moves_money_once(
    client: httpx.AsyncClient,
) -> None:
    account = await open_account(client)
    path, key = f"/v1/accounts/{account['id']}/deposits", a_key()

    first = await client.post(path, json={"amount": "5.00"}, headers=key)
    again = await client.post(path, json={"amount": "5.00"}, headers=key)

    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    events = (await client.get(f"/v1/accounts/{account['id']}/events")).json()["items"]
    assert [event["event_type"] for event in events] == ["AccountOpened", "Deposited"]


async def test_the_same_key_with_another_body_is_422(client: httpx.AsyncClient) -> None:
    account = await open_account(client)
    path, key = f"/v1/accounts/{account['id']}/deposits", a_key()
    await client.post(path, json={"amount": "5.00"}, headers=key)

    other_amount = await client.post(path, json={"amount": "6.00"}, headers=key)
    other_endpoint = await client.post(
        f"/v1/accounts/{account['id']}/withdrawals", json={"amount": "5.00"}, headers=key
    )

    assert_problem(other_amount, 422, "idempotency_key_reused")
    assert_problem(other_endpoint, 422, "idempotency_key_reused")
    assert await version_of(client, account["id"]) == 2


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "idempotency_key_required"),
        ({"Idempotency-Key": ""}, "invalid_idempotency_key"),
        ({"Idempotency-Key": "k" * 201}, "invalid_idempotency_key"),
    ],
)
async def test_a_movement_without_a_valid_key_is_422(
    client: httpx.AsyncClient, headers: dict[str, str], code: str
) -> None:
    account = await open_account(client)

    response = await client.post(
        f"/v1/accounts/{account['id']}/deposits", json={"amount": "1.00"}, headers=headers
    )

    assert_problem(response, 422, code)
    assert await version_of(client, account["id"]) == 1


async def test_a_refusal_is_kept_under_its_key_but_a_malformed_request_is_not(
    client: httpx.AsyncClient,
) -> None:
    account = await open_account(client)
    path, refused_key, malformed_key = (
        f"/v1/accounts/{account['id']}/withdrawals", a_key(), a_key(),
    )
    refused = await client.post(path, json={"amount": "1.00"}, headers=refused_key)
    malformed = await client.post(path, json={"amount": "1.001"}, headers=malformed_key)
    await deposit(client, account["id"], "5.00")

    refused_again = await client.post(path, json={"amount": "1.00"}, headers=refused_key)
    corrected = await client.post(path, json={"amount": "1.00"}, headers=malformed_key)

    assert_problem(refused, 409, "insufficient_funds")
    assert_problem(malformed, 422, "invalid_amount")
    assert refused_again.json() == refused.json()
    assert refused_again.headers["Idempotent-Replayed"] == "true"
    assert corrected.status_code == 201


async def test_concurrent_requests_with_one_key_move_money_once(
    client: httpx.AsyncClient,
) -> None:
    account = await open_account(client)
    path, key = f"/v1/accounts/{account['id']}/deposits", a_key()

    answers = await asyncio.gather(
        *(client.post(path, json={"amount": "1.00"}, headers=key) for _ in range(8))
    )

    assert {response.status_code for response in answers} == {201}
    assert all(response.json() == answers[0].json() for response in answers)
    assert (await client.get(f"/v1/accounts/{account['id']}")).json()["balance"] == "1.00"


async def test_concurrent_deposits_on_one_account_all_land(client: httpx.AsyncClient) -> None:
    account = await open_account(client)

    answers = await asyncio.gather(
        *(deposit(client, account["id"], f"{n}.00") for n in range(1, 21))
    )

    assert [response.status_code for response in answers] == [201] * 20
    after = (await client.get(f"/v1/accounts/{account['id']}")).json()
    assert (after["balance"], after["version"]) == ("210.00", 21)
    events = (await client.get(f"/v1/accounts/{account['id']}/events")).json()["items"]
    assert [event["stream_version"] for event in events] == list(range(1, 22))
    entries = (await client.get(f"/v1/accounts/{account['id']}/entries")).json()["items"]
    assert entries[-1]["balance_after"] == "210.00"


# --- freeze, unfreeze, close ---------------------------------------------------------------


async def test_a_frozen_account_refuses_movements_until_unfrozen(
    client: httpx.AsyncClient,
) -> None:
    account = await open_account(client)
    await deposit(client, account["id"], "10.00")

    frozen = await client.post(
        f"/v1/accounts/{account['id']}/freeze", json={"reason": "fraud review"}
    )
    refused_deposit = await deposit(client, account["id"], "1.00")
    refused_withdrawal = await withdraw(client, account["id"], "1.00")
    unfrozen = await client.post(f"/v1/accounts/{account['id']}/unfreeze")
    accepted = await deposit(client, account["id"], "1.00")

    assert (frozen.status_code, frozen.json()["status"]) == (200, "frozen")
    assert_problem(refused_deposit, 409, "account_frozen")
    assert_problem(refused_withdrawal, 409, "account_frozen")
    assert (unfrozen.status_code, unfrozen.json()["status"]) == (200, "open")
    assert accepted.status_code == 201
    assert accepted.json()["account"]["balance"] == "11.00"
    events = (await client.get(f"/v1/accounts/{account['id']}/events")).json()["items"]
    assert events[2]["data"] == {"reason": "fraud review"}


async def test_closing_needs_a_zero_balance_and_a_closed_account_refuses_everything(
    client: httpx.AsyncClient,
) -> None:
    account = await open_account(client)
    await deposit(client, account["id"], "3.00")

    with_balance = await client.post(f"/v1/accounts/{account['id']}/close")
    await withdraw(client, account["id"], "3.00")
    closed = await client.post(f"/v1/accounts/{account['id']}/close")
    refused = [
        await deposit(client, account["id"], "1.00"),
        await withdraw(client, account["id"], "1.00"),
        await client.post(f"/v1/accounts/{account['id']}/freeze"),
        await client.post(f"/v1/accounts/{account['id']}/unfreeze"),
    ]

    assert_problem(with_balance, 409, "cannot_close")
    assert (closed.status_code, closed.json()["status"], closed.json()["balance"]) == (
        200, "closed", "0.00",
    )
    for response in refused:
        assert_problem(response, 409, "account_closed")


# --- history ------------------------------------------------------------------------------


async def test_entries_list_every_movement_with_its_running_balance_in_pages(
    client: httpx.AsyncClient,
) -> None:
    account = await open_account(client)
    for amount in ("10.00", "20.00", "30.00"):
        await deposit(client, account["id"], amount)
    await withdraw(client, account["id"], "15.00")
    await client.post(f"/v1/accounts/{account['id']}/freeze")

    first = (await client.get(f"/v1/accounts/{account['id']}/entries", params={"limit": 3})).json()
    rest = (await client.get(
        f"/v1/accounts/{account['id']}/entries", params={"limit": 3, "cursor": first["next"]}
    )).json()

    entries = first["items"] + rest["items"]
    assert [(e["kind"], e["amount"], e["balance_after"]) for e in entries] == [
        ("deposit", "10.00", "10.00"), ("deposit", "20.00", "30.00"),
        ("deposit", "30.00", "60.00"), ("withdrawal", "-15.00", "45.00"),
    ]
    assert rest["next"] is None
    positions = [entry["global_position"] for entry in entries]
    assert positions == sorted(positions)


async def test_the_balance_as_of_a_past_instant_is_the_balance_then(
    client: httpx.AsyncClient,
) -> None:
    account = await open_account(client)
    first = (await deposit(client, account["id"], "10.00")).json()["entry"]
    second = (await deposit(client, account["id"], "5.00")).json()["entry"]
    assert first["recorded_at"] < second["recorded_at"]
    path = f"/v1/accounts/{account['id']}/balance"

    at_first = await client.get(path, params={"as_of": first["recorded_at"]})
    before_opening = await client.get(path, params={"as_of": "2000-01-01T00:00:00+00:00"})
    now = await client.get(path)
    entries_then = await client.get(
        f"/v1/accounts/{account['id']}/entries", params={"as_of": first["recorded_at"]}
    )

    assert at_first.status_code == 200
    assert (at_first.json()["balance"], at_first.json()["version"]) == ("10.00", 2)
    assert (before_opening.json()["balance"], before_opening.json()["version"]) == ("0.00", 0)
    assert (now.json()["balance"], now.json()["version"], now.json()["as_of"]) == (
        "15.00", 3, None,
    )
    assert [entry["id"] for entry in entries_then.json()["items"]] == [first["id"]]


@pytest.mark.parametrize("as_of", ["yesterday", "2024-01-01T00:00:00"])
async def test_a_balance_as_of_needs_an_rfc3339_time_with_offset(
    client: httpx.AsyncClient, as_of: str
) -> None:
    account = await open_account(client)

    response = await client.get(f"/v1/accounts/{account['id']}/balance", params={"as_of": as_of})

    assert_problem(response, 422, "validation_failed")


async def test_the_events_are_the_raw_audit_trail_with_chained_hashes(
    client: httpx.AsyncClient,
) -> None:
    account = await open_account(client)
    await deposit(client, account["id"], "1.00")
    await withdraw(client, account["id"], "1.00")
    path = f"/v1/accounts/{account['id']}/events"

    first = (await client.get(path, params={"limit": 2})).json()
    rest = (await client.get(path, params={"limit": 2, "cursor": first["next"]})).json()

    events = first["items"] + rest["items"]
    assert [event["event_type"] for event in events] == ["AccountOpened", "Deposited", "Withdrawn"]
    assert rest["next"] is None
    assert events[0]["data"]["account_id"] == account["id"]
    assert events[1]["data"]["amount_minor"] == 100
    for previous, event in itertools.pairwise(events):
        assert len(event["hash"]) == 64
        assert event["prev_hash"] == previous["hash"]
