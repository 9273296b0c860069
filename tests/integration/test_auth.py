"""Access control over HTTP: tokens, scopes, the owner rule, the actor, and request limits.

Most tests run against one whole ledger (every service) whose keys are an HS256 secret, an
RS256 key and an ES256 key; the gate's own behaviour (401, 413, 429, auth off) is checked on
an app with no service, whose settings each test chooses.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import asyncpg
import httpx
import jwt
import nats
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI
from pydantic import SecretStr
from starlette.types import Message

from account_service.events import stream_of as account_stream
from ledger.auth import Scope, TokenSigner
from ledger.auth.policy import ROUTES, is_public
from ledger.host import ServiceHost, running
from ledger.http import create_app
from ledger.services import available_services
from ledger.settings import Settings
from ledger.streaming import HEARTBEAT_S
from saga.contracts import stream_of as saga_stream
from tests.integration.authorized import authorized_client
from trade_service.domain import SettlementKind
from trade_service.events import stream_of as settlement_stream

PROBLEM: Final = "application/problem+json"
PREFIX: Final = f"auth{secrets.token_hex(3)}_"
RSA_KEY: Final = rsa.generate_private_key(public_exponent=65_537, key_size=2048)
EC_KEY: Final = ec.generate_private_key(ec.SECP256R1())
OWNER_SCOPES: Final = (Scope.ACCOUNTS_READ, Scope.ACCOUNTS_WRITE, Scope.TRANSFERS_WRITE)


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@dataclass
class Ledger:
    host: ServiceHost
    app: FastAPI
    settings: Settings

    def client(
        self, *scopes: Scope, subject: str = "tester", owner: str | None = None
    ) -> httpx.AsyncClient:
        return authorized_client(self.app, scopes or (Scope.ADMIN,), subject=subject,
                                 owner=owner)  # fmt: skip

    def bare(self, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app),
                                 base_url="http://ledger", headers=headers)  # fmt: skip


@pytest.fixture(scope="module")
async def ledger(
    database_url: str, nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Ledger]:
    ec_file = tmp_path_factory.mktemp("keys") / "ec-1.pem"
    ec_file.write_text(public_pem(EC_KEY))
    settings = Settings(
        database_url=database_url, nats_url=nats_url, schema_prefix=PREFIX,
        auth_jwt_secret=SecretStr(secrets.token_urlsafe(32)), rate_limit_per_s=0,
        auth_public_keys={"rsa-1": public_pem(RSA_KEY), "ec-1": str(ec_file)},
        instrument_scales={"ACME": 0}, subscription_poll_interval_s=0.05,
    )  # fmt: skip
    host = ServiceHost(settings, list(available_services().values()))
    try:
        async with running(host):
            yield Ledger(host, create_app(host, manage_host=False), settings)
    finally:
        await _forget(settings)


async def _forget(settings: Settings) -> None:
    """Drop the ledger's schemas and its durable consumers (all named after its prefix)."""
    connection = await asyncpg.connect(settings.database_url)
    try:
        for name in available_services():
            await connection.execute(f"drop schema if exists {settings.schema_for(name)} cascade")
    finally:
        await connection.close()
    nc = await nats.connect(settings.nats_servers)
    try:
        js = nc.jetstream()
        for consumer in await js.consumers_info(settings.events_stream):
            if consumer.name.startswith(PREFIX):
                await js.delete_consumer(settings.events_stream, consumer.name)
    finally:
        await nc.close()


def gate_app(database_url: str, nats_url: str, **overrides: Any) -> FastAPI:
    """An app with no domain service (nothing started): /health, /metrics, /docs, and the
    event streams route, which answers 404 to an authorized request."""
    settings = Settings(database_url=database_url, nats_url=nats_url, schema_prefix=PREFIX,
                        **overrides)  # fmt: skip
    return create_app(ServiceHost(settings, []), manage_host=False)


def client_of(app: FastAPI, token: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ledger",
                             headers=headers)  # fmt: skip


def a_key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


async def open_account(client: httpx.AsyncClient, owner: str, currency: str = "USD") -> str:
    response = await client.post("/v1/accounts", json={"owner": owner, "currency": currency})
    assert response.status_code == 201, response.text
    account_id: str = response.json()["id"]
    return account_id


async def deposit(client: httpx.AsyncClient, account_id: str, amount: str) -> httpx.Response:
    return await client.post(f"/v1/accounts/{account_id}/deposits", json={"amount": amount},
                             headers=a_key())  # fmt: skip


def assert_problem(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    if code is not None:
        assert response.json()["code"] == code


# --- tokens --------------------------------------------------------------------------------


async def test_a_request_without_a_token_is_401_with_a_bearer_challenge(
    database_url: str, nats_url: str
) -> None:
    async with client_of(gate_app(database_url, nats_url)) as client:
        response = await client.get("/v1/accounts")

    assert_problem(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="ledger"'
    assert "X-Correlation-Id" in response.headers


async def test_an_answer_of_the_gate_is_timed_under_the_route_it_was_for(
    database_url: str, nats_url: str
) -> None:
    async with client_of(gate_app(database_url, nats_url)) as client:
        refused = await client.get("/v1/streams/note-1/events")
        missing = await client.get("/v1/no-such-route")
        metrics = (await client.get("/metrics")).text

    assert (refused.status_code, missing.status_code) == (401, 401)
    assert ('ledger_http_request_seconds_count{method="GET",'
            'route="/v1/streams/{stream_id}/events",status="401"}') in metrics
    assert 'route="unmatched",status="401"}' in metrics


async def test_health_metrics_and_the_api_docs_need_no_token(
    database_url: str, nats_url: str
) -> None:
    async with client_of(gate_app(database_url, nats_url)) as client:
        statuses = [(await client.get(path)).status_code
                    for path in ("/health/live", "/metrics", "/openapi.json", "/docs")]

    assert statuses == [200, 200, 200, 200]


def _forged(settings: Settings) -> Iterator[tuple[str, str]]:
    """(what is wrong, token) for tokens the ledger must refuse."""
    now = int(time.time())
    claims = {"sub": "mallory", "scope": "admin", "iat": now, "exp": now + 600}
    secret = settings.auth_jwt_secret
    assert secret is not None
    good = jwt.encode(claims, secret.get_secret_value(), algorithm="HS256")
    yield "expired", TokenSigner.from_settings(settings).issue(
        "tester", [Scope.ADMIN], ttl_s=60, now_s=now - 3600)
    yield "another secret", jwt.encode(claims, secrets.token_urlsafe(32), algorithm="HS256")
    yield "alg none", jwt.encode(claims, "", algorithm="none")
    header, _, signature = good.split(".")
    tampered = base64.urlsafe_b64encode(
        orjson.dumps({**claims, "sub": "admin-2", "owner": None})).rstrip(b"=").decode()
    yield "tampered payload", f"{header}.{tampered}.{signature}"
    yield "malformed", "not-a-jwt"
    yield "no exp", jwt.encode({"sub": "mallory", "scope": "admin"},
                               secret.get_secret_value(), algorithm="HS256")
    yield "another RSA key", jwt.encode(
        claims, rsa.generate_private_key(public_exponent=65_537, key_size=2048),
        algorithm="RS256", headers={"kid": "rsa-1"})
    yield "an unknown kid", jwt.encode(claims, RSA_KEY, algorithm="RS256",
                                       headers={"kid": "rsa-9"})
    yield "HS256 keyed with the public key", _hs256(claims, public_pem(RSA_KEY).encode(),
                                                    kid="rsa-1")
    yield "a hostile alg", _hs256(claims, b"k", kid="x", alg='\u2603"\r\nSet-Cookie: a=b')
    yield "an alg that is a JSON list", _hs256(claims, secret.get_secret_value().encode(),
                                               kid="x", alg=["HS256"])  # fmt: skip
    yield "an alg that is a JSON object", _hs256(claims, b"k", kid="x", alg={"HS256": 1})


def _hs256(claims: dict[str, Any], key: bytes, *, kid: str, alg: object = "HS256") -> str:
    """A token HMAC-signed with `key` by hand (PyJWT refuses a PEM as an HMAC key, as the
    "alg confusion" attack needs)."""
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(value)).rstrip(b"=").decode()

    signing_input = f"{part({'alg': alg, 'typ': 'JWT', 'kid': kid})}.{part(claims)}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


async def test_forged_expired_and_malformed_tokens_are_401_invalid_token(ledger: Ledger) -> None:
    refused: dict[str, httpx.Response] = {}
    for what, token in _forged(ledger.settings):
        async with ledger.bare({"Authorization": f"Bearer {token}"}) as client:
            refused[what] = await client.get("/v1/accounts")

    for what, response in refused.items():
        assert response.status_code == 401, what
        assert response.headers["content-type"] == PROBLEM, what
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"], what
    assert "expired" in refused["expired"].json()["detail"]
    assert "Set-Cookie" not in refused["a hostile alg"].headers


async def test_an_event_stream_ends_when_its_token_expires(
    ledger: Ledger, owners: dict[str, str]
) -> None:
    # Valid for three more seconds: expired 27 s ago, within the clock skew of 30.
    skew_s = ledger.settings.auth_clock_skew_s
    token = TokenSigner.from_settings(ledger.settings).issue(
        "auditor", [Scope.AUDIT_READ], ttl_s=60, now_s=time.time() - 60 - skew_s + 3)
    headers = {"Authorization": f"Bearer {token}"}

    async with ledger.bare(headers) as client:
        # The in-process transport answers once the stream has ended: an endless one times out.
        async with asyncio.timeout(HEARTBEAT_S / 2):
            followed = await client.get(f"/v1/streams/account-{owners['bob']}/events")
        afterwards = await client.get(f"/v1/streams/account-{owners['bob']}/events")

    assert followed.status_code == 200
    assert "event: AccountOpened" in followed.text  # what was there before it expired
    assert_problem(afterwards, 401, "unauthorized")


async def test_a_token_not_sent_as_bearer_is_401(ledger: Ledger) -> None:
    secret = ledger.settings.auth_jwt_secret
    assert secret is not None
    async with ledger.bare({"Authorization": f"Basic {secret.get_secret_value()}"}) as client:
        response = await client.get("/v1/accounts")

    assert_problem(response, 401, "unauthorized")


@pytest.mark.parametrize(("kid", "algorithm"), [("rsa-1", "RS256"), ("ec-1", "ES256")])
async def test_tokens_signed_with_a_configured_key_pair_are_accepted(
    ledger: Ledger, kid: str, algorithm: str
) -> None:
    key = RSA_KEY if kid == "rsa-1" else EC_KEY
    signer = TokenSigner(key, "RS256" if kid == "rsa-1" else "ES256", kid)
    token = signer.issue("idp-user", [Scope.ACCOUNTS_READ], ttl_s=300)

    async with ledger.bare({"Authorization": f"Bearer {token}"}) as client:
        response = await client.get("/v1/accounts")

    assert jwt.get_unverified_header(token)["alg"] == algorithm
    assert response.status_code == 200, response.text


# --- scopes --------------------------------------------------------------------------------

_REQUESTS: Final = ("list accounts", "open account", "deposit", "transfer", "set limits",
                    "list decisions", "list sagas", "retry saga", "follow stream")
_ALLOWED: Final = {
    Scope.ACCOUNTS_READ: {"list accounts"},
    Scope.ACCOUNTS_WRITE: {"open account"},
    Scope.ACCOUNTS_ADMIN: {"deposit"},
    Scope.TRANSFERS_WRITE: {"transfer"},
    Scope.RISK_ADMIN: {"set limits", "list decisions"},
    Scope.AUDIT_READ: {"list decisions", "list sagas", "follow stream"},
    Scope.ADMIN: set(_REQUESTS),
}


async def _send(client: httpx.AsyncClient, request: str, account_id: str) -> httpx.Response:
    match request:
        case "list accounts":
            return await client.get("/v1/accounts")
        case "open account":
            return await client.post("/v1/accounts", json={"owner": "o-1", "currency": "USD"})
        case "deposit":
            return await deposit(client, account_id, "1.00")
        case "transfer":
            body = {"from_account": account_id, "to_account": f"acc-{uuid.uuid4().hex[:8]}",
                    "amount": "1.00", "currency": "USD"}
            return await client.post("/v1/transfers", json=body, headers=a_key())
        case "set limits":
            return await client.put(f"/v1/risk/accounts/{account_id}/limits", json={})
        case "list decisions":
            return await client.get("/v1/risk/decisions")
        case "list sagas":
            return await client.get("/v1/sagas")
        case "retry saga":
            return await client.post("/v1/sagas/no-such-saga/retry")
        case "follow stream":
            return await client.get("/v1/streams/account-no-such/events")
    raise AssertionError(request)


@pytest.mark.parametrize("scope", list(Scope))
async def test_each_scope_allows_its_routes_and_refuses_the_others(
    ledger: Ledger, scope: Scope
) -> None:
    async with ledger.client() as admin:
        account_id = await open_account(admin, "o-1")
    async with ledger.client(scope) as client:
        answers = {request: await _send(client, request, account_id) for request in _REQUESTS}

    for request, response in answers.items():
        if request in _ALLOWED[scope]:
            assert response.status_code not in (401, 403), (request, response.text)
        else:
            assert_problem(response, 403, "insufficient_scope")
            assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]


def test_every_route_of_the_ledger_is_public_or_in_the_scope_table(ledger: Ledger) -> None:
    # The OpenAPI document lists every route, those of included routers too.
    routes = [(method.upper(), path) for path, operations in ledger.app.openapi()["paths"].items()
              for method in operations]  # fmt: skip

    unlisted = [(method, path) for method, path in routes
                if not is_public(path) and (method, path) not in ROUTES]  # fmt: skip

    assert unlisted == []
    assert set(ROUTES) <= set(routes)


def test_the_openapi_declares_bearer_tokens_on_protected_operations_only(ledger: Ledger) -> None:
    document = ledger.app.openapi()
    paths = document["paths"]

    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert paths["/v1/accounts"]["get"]["security"] == [{"bearerAuth": []}]
    assert "401" in paths["/v1/transfers"]["post"]["responses"]
    assert "security" not in paths["/health/live"]["get"]


# --- the owner rule ------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def owners(ledger: Ledger) -> dict[str, str]:
    """alice's and bob's accounts, funded: `{"alice": id, "bob": id}`."""
    made: dict[str, str] = {}
    async with ledger.client() as admin:
        for owner in ("alice", "bob"):
            made[owner] = await open_account(admin, owner)
            assert (await deposit(admin, made[owner], "100.00")).status_code == 201
    return made


async def test_an_owner_reads_its_accounts_and_not_anothers_which_look_missing(
    ledger: Ledger, owners: dict[str, str]
) -> None:
    missing = f"acc-{uuid.uuid4().hex[:8]}"
    async with ledger.client(*OWNER_SCOPES, owner="alice") as alice:
        own = await alice.get(f"/v1/accounts/{owners['alice']}")
        theirs = {path: await alice.get(path.format(owners["bob"])) for path in (
            "/v1/accounts/{}", "/v1/accounts/{}/balance", "/v1/accounts/{}/entries",
            "/v1/accounts/{}/events")}  # fmt: skip
        absent = await alice.get(f"/v1/accounts/{missing}")

    assert own.status_code == 200
    for response in theirs.values():
        assert_problem(response, 404, "unknown_account")
    assert theirs["/v1/accounts/{}"].json()["detail"].replace(owners["bob"], missing) == (
        absent.json()["detail"]
    )


async def test_an_owner_lists_only_its_own_accounts(
    ledger: Ledger, owners: dict[str, str]
) -> None:
    async with ledger.client(*OWNER_SCOPES, owner="alice") as alice:
        listed = (await alice.get("/v1/accounts")).json()["items"]
        asked_for_bob = (await alice.get("/v1/accounts", params={"owner": "bob"})).json()

    assert {item["owner"] for item in listed} == {"alice"}
    assert owners["alice"] in {item["id"] for item in listed}
    assert asked_for_bob["items"] == []


async def test_an_owner_opens_and_closes_only_its_own_accounts(
    ledger: Ledger, owners: dict[str, str]
) -> None:
    missing = f"acc-{uuid.uuid4().hex[:8]}"
    async with ledger.client(*OWNER_SCOPES, owner="alice") as alice:
        opened_own = await alice.post("/v1/accounts", json={"owner": "alice", "currency": "EUR"})
        opened_for_bob = await alice.post("/v1/accounts",
                                          json={"owner": "bob", "currency": "EUR"})
        closed_bob = await alice.post(f"/v1/accounts/{owners['bob']}/close")
        closed_nothing = await alice.post(f"/v1/accounts/{missing}/close")
        closed_own = await alice.post(f"/v1/accounts/{opened_own.json()['id']}/close")

    assert opened_own.status_code == 201
    assert closed_own.status_code == 200, closed_own.text
    for refused in (opened_for_bob, closed_bob, closed_nothing):
        assert_problem(refused, 403, "not_owner")
    assert closed_bob.json()["detail"].replace(owners["bob"], missing) == (
        closed_nothing.json()["detail"]
    )


async def test_money_in_and_out_and_freezes_are_the_back_offices_never_an_owners(
    ledger: Ledger, owners: dict[str, str]
) -> None:
    """A deposit records money arriving from outside the ledger, a withdrawal money leaving
    it, a freeze the bank's hold on an account: an owner asserting them for itself would mint
    money or lift a freeze placed on it."""
    own = owners["alice"]

    async def back_office_requests(client: httpx.AsyncClient) -> list[httpx.Response]:
        return [
            await deposit(client, own, "1.00"),
            await client.post(f"/v1/accounts/{own}/withdrawals", json={"amount": "1.00"},
                              headers=a_key()),
            await client.post(f"/v1/accounts/{own}/freeze"),
            await client.post(f"/v1/accounts/{own}/unfreeze"),
        ]  # fmt: skip

    async with ledger.client(Scope.ADMIN, owner="alice") as alice:  # even with every scope
        as_owner = await back_office_requests(alice)
    async with ledger.client(Scope.ACCOUNTS_WRITE) as writer:
        as_writer = await back_office_requests(writer)
    async with ledger.client(Scope.ACCOUNTS_ADMIN) as teller:
        as_teller = await back_office_requests(teller)

    for response in as_owner:
        assert_problem(response, 403, "owner_token_refused")
    for response in as_writer:
        assert_problem(response, 403, "insufficient_scope")
    assert [response.status_code for response in as_teller] == [201, 201, 200, 200]


async def test_an_owner_moves_money_only_out_of_its_own_accounts(
    ledger: Ledger, owners: dict[str, str]
) -> None:
    def transfer(payer: str, payee: str) -> dict[str, str]:
        return {"from_account": payer, "to_account": payee, "amount": "1.00", "currency": "USD"}

    trade = {"instrument": "ACME", "quantity": "1", "price": "1", "currency": "USD",
             "buyer": {"cash_account": owners["alice"], "asset_account": "acc-a-acme"},
             "seller": {"cash_account": "acc-b-usd", "asset_account": owners["bob"]}}
    async with ledger.client(*OWNER_SCOPES, owner="alice") as alice:
        out_of_bob = await alice.post("/v1/transfers", json=transfer(owners["bob"],
                                                                    owners["alice"]),
                                      headers=a_key())  # fmt: skip
        out_of_own = await alice.post("/v1/transfers", json=transfer(owners["alice"],
                                                                    owners["bob"]),
                                      headers=a_key())  # fmt: skip
        trade_out_of_bob = await alice.post("/v1/trades", json=trade, headers=a_key())

    assert_problem(out_of_bob, 403, "not_owner")
    assert out_of_own.status_code == 202, out_of_own.text
    assert_problem(trade_out_of_bob, 403, "not_owner")


async def test_a_transfer_is_read_only_by_owners_of_its_accounts(
    ledger: Ledger, owners: dict[str, str]
) -> None:
    body = {"from_account": owners["alice"], "to_account": owners["bob"], "amount": "1.00",
            "currency": "USD"}
    async with ledger.client(*OWNER_SCOPES, owner="alice") as alice:
        transfer_id = (await alice.post("/v1/transfers", json=body, headers=a_key())).json()["id"]
        by_alice = await alice.get(f"/v1/transfers/{transfer_id}")
        listed_by_alice = await alice.get("/v1/transfers", params={"account": owners["alice"]})
        unfiltered = await alice.get("/v1/transfers")
    async with ledger.client(Scope.ACCOUNTS_READ, owner="bob") as bob:
        by_bob = await bob.get(f"/v1/transfers/{transfer_id}")
    async with ledger.client(Scope.ACCOUNTS_READ, owner="carol") as carol:
        by_carol = await carol.get(f"/v1/transfers/{transfer_id}", params={"wait": 5})
        listed_by_carol = await carol.get("/v1/transfers", params={"account": owners["alice"]})
        missing = await carol.get(f"/v1/transfers/{uuid.uuid4()}")

    assert by_alice.status_code == 200
    assert by_bob.status_code == 200
    assert transfer_id in {item["id"] for item in listed_by_alice.json()["items"]}
    assert_problem(unfiltered, 422, "account_required")
    assert_problem(by_carol, 404, missing.json()["code"])
    assert listed_by_carol.json()["items"] == []


async def test_why_a_settlement_was_refused_is_read_by_its_payers_owner_only(
    ledger: Ledger, owners: dict[str, str]
) -> None:
    note = f"AML review {uuid.uuid4().hex[:8]}"
    async with ledger.client() as admin:
        payer = await open_account(admin, "bob")
        await _until_risk_knows(admin, payer, owners["alice"])
        blocked = await admin.post(f"/v1/risk/accounts/{payer}/block", json={"reason": note})
        body = {"from_account": payer, "to_account": owners["alice"], "amount": "1.00",
                "currency": "USD"}
        transfer_id = (await admin.post("/v1/transfers", json=body, headers=a_key())).json()["id"]
    async with ledger.client(Scope.ACCOUNTS_READ, owner="bob") as bob:
        by_payer = (await bob.get(f"/v1/transfers/{transfer_id}", params={"wait": 20})).json()
    async with ledger.client(Scope.ACCOUNTS_READ, owner="alice") as alice:
        by_payee = await alice.get(f"/v1/transfers/{transfer_id}")
        listed_by_payee = await alice.get("/v1/transfers", params={"account": owners["alice"]})

    assert blocked.status_code == 200, blocked.text
    assert by_payer["status"] == "rejected", by_payer
    assert note in by_payer["detail"]
    assert by_payee.status_code == 200
    assert by_payee.json()["reason"] == by_payer["reason"] == "account_blocked"
    assert by_payee.json()["detail"] is None
    assert {step["detail"] for step in by_payee.json()["steps"]} == {None}
    assert note not in by_payee.text
    assert transfer_id in {item["id"] for item in listed_by_payee.json()["items"]}
    assert note not in listed_by_payee.text


async def test_an_owner_token_is_refused_where_no_owner_rule_applies(ledger: Ledger) -> None:
    async with ledger.client(Scope.ADMIN, owner="alice") as alice:
        responses = [await alice.get("/v1/sagas"), await alice.get("/v1/risk/decisions"),
                     await alice.get(f"/v1/streams/account-{uuid.uuid4()}/events")]

    for response in responses:
        assert_problem(response, 403, "owner_token_refused")


# --- who did what --------------------------------------------------------------------------


async def test_the_token_subject_is_the_actor_of_every_event_of_a_transfer(
    ledger: Ledger, owners: dict[str, str]
) -> None:
    async with ledger.client(*OWNER_SCOPES, subject="alice-app", owner="alice") as alice:
        payer = await open_account(alice, "alice")
        async with ledger.client(Scope.ACCOUNTS_ADMIN, subject="teller") as teller:
            assert (await deposit(teller, payer, "10.00")).status_code == 201
        async with ledger.client() as admin:
            await _until_risk_knows(admin, payer, owners["alice"])
        body = {"from_account": payer, "to_account": owners["alice"], "amount": "2.50",
                "currency": "USD"}
        transfer_id = (await alice.post("/v1/transfers", json=body, headers=a_key(
        ))).json()["id"]  # fmt: skip
        settled = (await alice.get(f"/v1/transfers/{transfer_id}", params={"wait": 20})).json()

    stores = {name: runtime.store for name, runtime in ledger.host.runtimes.items()}
    events = [
        *await stores["account"].read_stream(account_stream(payer)),
        *await stores["trade"].read_stream(settlement_stream(SettlementKind.TRANSFER,
                                                             transfer_id)),
        *await stores["saga"].read_stream(saga_stream(transfer_id)),
    ]  # fmt: skip
    assert settled["status"] == "completed", settled
    assert {"AccountOpened", "Deposited", "HoldPlaced", "HoldPosted", "SagaStarted"} <= {
        event.event_type for event in events
    }
    assert {event.metadata.get("actor") for event in events
            if event.event_type != "Deposited"} == {"alice-app"}  # fmt: skip
    assert [event.metadata.get("actor") for event in events
            if event.event_type == "Deposited"] == ["teller"]  # fmt: skip


async def test_an_owner_reads_who_asked_only_for_its_own_requests_on_its_accounts_events(
    ledger: Ledger, owners: dict[str, str]
) -> None:
    """bob pays alice: the events of the transfer on alice's account name bob's token and
    carry his request's correlation id and trace. alice's token sees that of its own
    requests only; the back office sees everything, as stored."""
    bobs_correlation = f"bob-order-{uuid.uuid4().hex[:8]}"
    bobs_trace = secrets.token_hex(16)
    alices_correlation = f"alice-open-{uuid.uuid4().hex[:8]}"
    async with ledger.client(*OWNER_SCOPES, subject="alice-phone", owner="alice") as alice:
        payee = (await alice.post("/v1/accounts", json={"owner": "alice", "currency": "USD"},
                                  headers={"X-Correlation-Id": alices_correlation})).json()["id"]
    async with ledger.client() as admin:
        await _until_risk_knows(admin, owners["bob"], payee)
    bobs_headers = {**a_key(), "X-Correlation-Id": bobs_correlation,
                    "traceparent": f"00-{bobs_trace}-{secrets.token_hex(8)}-01"}
    body = {"from_account": owners["bob"], "to_account": payee, "amount": "3.00",
            "currency": "USD"}
    async with ledger.client(*OWNER_SCOPES, subject="bob-phone", owner="bob") as bob:
        transfer_id = (await bob.post("/v1/transfers", json=body, headers=bobs_headers
                                      )).json()["id"]  # fmt: skip
        settled = (await bob.get(f"/v1/transfers/{transfer_id}", params={"wait": 20})).json()
    async with ledger.client(*OWNER_SCOPES, subject="alice-phone", owner="alice") as alice:
        by_alice = await alice.get(f"/v1/accounts/{payee}/events")
    async with ledger.client(Scope.ACCOUNTS_READ, subject="back-office") as back_office:
        by_back_office = await back_office.get(f"/v1/accounts/{payee}/events")

    assert settled["status"] == "completed", settled
    assert by_alice.status_code == by_back_office.status_code == 200, by_alice.text
    seen = {event["event_type"]: event["metadata"] for event in by_alice.json()["items"]}
    stored = {event["event_type"]: event["metadata"] for event in by_back_office.json()["items"]}
    assert set(seen) == set(stored) == {"AccountOpened", "HoldPlaced", "HoldPosted"}
    assert seen["AccountOpened"] == stored["AccountOpened"]
    assert seen["AccountOpened"]["actor"] == "alice-phone"
    assert seen["AccountOpened"]["correlation_id"] == alices_correlation
    for bobs_event in ("HoldPlaced", "HoldPosted"):
        assert stored[bobs_event]["actor"] == "bob-phone"
        assert stored[bobs_event]["correlation_id"] == bobs_correlation
        assert bobs_trace in stored[bobs_event]["traceparent"]
        assert seen[bobs_event] == {}
    for trace_of_bob in ("bob-phone", bobs_correlation, bobs_trace):
        assert trace_of_bob not in by_alice.text


async def _until_risk_knows(client: httpx.AsyncClient, *account_ids: str) -> None:
    async with asyncio.timeout(30):
        for account_id in account_ids:
            # Polled: risk learns of accounts from the account service's events.
            while (await client.get(f"/v1/risk/accounts/{account_id}")).status_code != 200:  # noqa: ASYNC110
                await asyncio.sleep(0.05)


# --- request limits ------------------------------------------------------------------------


async def test_a_subject_past_its_burst_is_429_with_retry_after(
    database_url: str, nats_url: str
) -> None:
    app = gate_app(database_url, nats_url, rate_limit_per_s=0.001, rate_limit_burst=2)
    settings: Settings = app.state.host.settings
    signer = TokenSigner.from_settings(settings)
    eager, other = (signer.issue(subject, [Scope.ADMIN], ttl_s=60) for subject in ("a", "b"))
    async with client_of(app, eager) as client:
        allowed = [await client.get("/v1/streams/note-1/events") for _ in range(2)]
        limited = await client.get("/v1/streams/note-1/events")
    async with client_of(app, other) as client:
        another_subject = await client.get("/v1/streams/note-1/events")
    async with client_of(app, "forged") as client:
        by_address = [(await client.get("/v1/accounts")).status_code for _ in range(3)]

    assert [response.status_code for response in allowed] == [404, 404]
    assert_problem(limited, 429, "rate_limited")
    assert int(limited.headers["Retry-After"]) >= 1
    assert another_subject.status_code == 404
    assert by_address == [401, 401, 429]


async def test_a_body_over_the_limit_is_413(database_url: str, nats_url: str) -> None:
    app = gate_app(database_url, nats_url, max_body_bytes=1024)
    token = TokenSigner.from_settings(app.state.host.settings).issue("a", [Scope.ADMIN],
                                                                     ttl_s=60)  # fmt: skip

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"x" * 512

    async with client_of(app, token) as client:
        declared = await client.post("/v1/accounts", content=b"{" + b" " * 2048 + b"}",
                                     headers={"content-type": "application/json"})
        streamed = await client.post("/v1/accounts", content=chunks())
        within = await client.post("/v1/streams/note-1/events", content=b"x" * 1024)

    assert_problem(declared, 413, "content_too_large")
    assert_problem(streamed, 413, "content_too_large")
    assert within.status_code == 405


# --- configuration -------------------------------------------------------------------------


async def test_auth_off_serves_without_a_token_and_warns(
    database_url: str, nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = gate_app(database_url, nats_url, auth="off")

    async with client_of(app) as client:
        response = await client.get("/v1/streams/note-1/events")

    assert response.status_code == 404
    assert "LEDGER_AUTH=off" in caplog.text


@pytest.mark.parametrize("overrides", [
    {"auth": "off"}, {"auth_jwt_secret": None, "auth_public_keys": {}},
], ids=["auth off", "no keys"])  # fmt: skip
def test_production_refuses_to_serve_without_token_checks(
    database_url: str, nats_url: str, overrides: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match="LEDGER_"):
        gate_app(database_url, nats_url, environment="production", **overrides)


def test_an_unreadable_public_key_is_refused_by_name(
    database_url: str, nats_url: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="rotated-2"):
        gate_app(database_url, nats_url, auth_public_keys={"rotated-2": str(tmp_path / "no")})


async def test_a_client_that_leaves_before_its_body_gets_an_answer_no_route_runs_for(
    database_url: str, nats_url: str
) -> None:
    app = gate_app(database_url, nats_url)
    token = TokenSigner.from_settings(app.state.host.settings).issue("a", [Scope.ADMIN],
                                                                     ttl_s=60)  # fmt: skip
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/accounts", "raw_path": b"",
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
             "server": ("ledger", 80),
             "headers": [(b"authorization", f"Bearer {token}".encode())]}  # fmt: skip
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)

    assert sent[0]["type"] == "http.response.start"
    assert sent[0]["status"] == 400
