"""Malformed requests to every service are refused cleanly, against real PostgreSQL and NATS:
unknown fields, overlong strings, malformed ids and out-of-range numbers are a 422
problem+json naming what is wrong, an unknown well-formed id a 404, never a 500; and the
OpenAPI documents every one of those answers as problem+json."""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any, Final

import httpx
import pytest

from ledger.host import ServiceHost, running
from ledger.http import create_app
from ledger.problems import PROBLEM_MEDIA_TYPE
from ledger.services import available_services
from ledger.settings import Settings
from tests.integration.authorized import bearer
from tests.integration.whole_ledger import forget, ledger_settings

TOKEN: Final = secrets.token_hex(4)
LONG_ID: Final = "a" * 101
NOT_AN_ID: Final = "not an id"


@pytest.fixture(scope="module")
def settings(database_url: str, nats_url: str) -> Settings:
    return ledger_settings(database_url, nats_url, f"v{TOKEN}_")


@pytest.fixture(scope="module")
async def host(settings: Settings) -> AsyncIterator[ServiceHost]:
    services = list(available_services().values())
    async with running(ServiceHost(settings, services)) as started:
        yield started
    await forget(settings)


@pytest.fixture(scope="module")
async def client(host: ServiceHost, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(host, manage_host=False))
    async with httpx.AsyncClient(transport=transport, base_url="http://ledger",
                                 headers=bearer(settings)) as created:
        yield created


@pytest.fixture(scope="module")
async def account_id(client: httpx.AsyncClient) -> str:
    response = await client.post("/v1/accounts", json={"owner": "o-1", "currency": "USD"})
    assert response.status_code == 201, response.text
    created: str = response.json()["id"]
    return created


def a_key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


def assert_problem(response: httpx.Response, status: int, code: str | None = None) -> Any:
    """The response is a problem+json answer of `status` (and `code`); its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    body = response.json()
    assert body["status"] == status
    if code is not None:
        assert body["code"] == code, body
    return body


def invalid_fields(response: httpx.Response) -> list[list[Any]]:
    """The locations a 422 `validation_failed` problem names."""
    body = assert_problem(response, 422, "validation_failed")
    return [error["location"] for error in body["errors"]]


TRANSFER: Final = {"from_account": "a-1", "to_account": "a-2", "amount": "1.00",
                   "currency": "USD"}  # fmt: skip
TRADE: Final = {
    "instrument": "USD", "quantity": "1", "price": "1", "currency": "EUR",
    "buyer": {"cash_account": "a-1", "asset_account": "a-2"},
    "seller": {"cash_account": "a-3", "asset_account": "a-4"},
}
BODIES: Final = [
    ("post", "/v1/accounts", {"owner": "o-1", "currency": "USD"}),
    ("post", "/v1/accounts/{account}/deposits", {"amount": "1.00"}),
    ("post", "/v1/accounts/{account}/withdrawals", {"amount": "1.00"}),
    ("post", "/v1/accounts/{account}/freeze", {"reason": "review"}),
    ("put", "/v1/risk/accounts/{account}/limits", {"max_transfer": "10.00"}),
    ("post", "/v1/risk/accounts/{account}/block", {"reason": "review"}),
    ("post", "/v1/risk/accounts/{account}/unblock", {"reason": "review"}),
    ("post", "/v1/transfers", TRANSFER),
    ("post", "/v1/trades", TRADE),
    ("post", "/v1/sagas/{account}/retry", {"by": "operator"}),
]


# --- unknown fields ---------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), BODIES)
async def test_an_unknown_field_is_a_422_naming_it(
    client: httpx.AsyncClient, account_id: str, method: str, path: str, body: dict[str, Any]
) -> None:
    response = await client.request(method, path.format(account=account_id),
                                    json={**body, "colour": "red"}, headers=a_key())  # fmt: skip

    assert invalid_fields(response) == [["body", "colour"]]


async def test_an_unknown_field_in_a_nested_object_is_named_with_its_path(
    client: httpx.AsyncClient,
) -> None:
    buyer = {**TRADE["buyer"], "broker": "x"}  # type: ignore[dict-item]

    response = await client.post("/v1/trades", json={**TRADE, "buyer": buyer}, headers=a_key())

    assert invalid_fields(response) == [["body", "buyer", "broker"]]


# --- strings are bounded ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("post", "/v1/accounts", {"owner": LONG_ID, "currency": "USD"}, "owner"),
        ("post", "/v1/accounts", {"owner": "o", "currency": "U" * 13}, "currency"),
        ("post", "/v1/accounts/{account}/deposits",
         {"amount": "1" * 41}, "amount"),
        ("post", "/v1/accounts/{account}/deposits",
         {"amount": "1.00", "reference": "r" * 201}, "reference"),
        ("post", "/v1/accounts/{account}/freeze", {"reason": "r" * 501}, "reason"),
        ("post", "/v1/risk/accounts/{account}/block", {"reason": "r" * 501}, "reason"),
        ("put", "/v1/risk/accounts/{account}/limits", {"daily_outflow": "1" * 41},
         "daily_outflow"),
        ("post", "/v1/transfers", {**TRANSFER, "to_account": LONG_ID}, "to_account"),
        ("post", "/v1/transfers", {**TRANSFER, "reference": "r" * 201}, "reference"),
        ("post", "/v1/trades", {**TRADE, "price": "1" * 41}, "price"),
        ("post", "/v1/sagas/{account}/retry", {"by": "b" * 101}, "by"),
    ],
)  # fmt: skip
async def test_an_overlong_string_in_a_body_is_a_422_naming_it(
    client: httpx.AsyncClient, account_id: str, method: str, path: str, body: dict[str, Any],
    field: str,
) -> None:
    response = await client.request(method, path.format(account=account_id), json=body,
                                    headers=a_key())  # fmt: skip

    assert invalid_fields(response) == [["body", field]]


@pytest.mark.parametrize(
    ("path", "parameter", "value"),
    [
        ("/v1/accounts", "owner", LONG_ID),
        ("/v1/accounts", "currency", "U" * 13),
        ("/v1/accounts", "cursor", "c" * 201),
        ("/v1/risk/decisions", "account", LONG_ID),
        ("/v1/transfers", "account", NOT_AN_ID),
        ("/v1/trades", "cursor", "c" * 201),
        ("/v1/sagas", "after", LONG_ID),
    ],
)
async def test_an_overlong_or_malformed_query_parameter_is_a_422_naming_it(
    client: httpx.AsyncClient, path: str, parameter: str, value: str
) -> None:
    response = await client.get(path, params={parameter: value})

    assert invalid_fields(response) == [["query", parameter]]


async def test_an_overlong_idempotency_key_is_a_422(
    client: httpx.AsyncClient, account_id: str
) -> None:
    response = await client.post(f"/v1/accounts/{account_id}/deposits", json={"amount": "1.00"},
                                 headers={"Idempotency-Key": "k" * 201})  # fmt: skip

    assert_problem(response, 422, "invalid_idempotency_key")


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/accounts/{account}/deposits", {"amount": 12.34}, "amount"),
        ("/v1/transfers", {**TRANSFER, "amount": 1}, "amount"),
        ("/v1/trades", {**TRADE, "price": 2.5}, "price"),
    ],
)
async def test_an_amount_sent_as_a_json_number_is_a_422_floats_never_enter(
    client: httpx.AsyncClient, account_id: str, path: str, body: dict[str, Any], field: str
) -> None:
    response = await client.post(path.format(account=account_id), json=body, headers=a_key())

    assert invalid_fields(response) == [["body", field]]


# --- ids in paths -----------------------------------------------------------------------

ID_PATHS: Final = [
    ("get", "/v1/accounts/{id}"),
    ("get", "/v1/accounts/{id}/entries"),
    ("get", "/v1/accounts/{id}/balance"),
    ("get", "/v1/accounts/{id}/events"),
    ("post", "/v1/accounts/{id}/close"),
    ("get", "/v1/risk/accounts/{id}"),
    ("get", "/v1/transfers/{id}"),
    ("get", "/v1/trades/{id}"),
    ("get", "/v1/sagas/{id}"),
    ("post", "/v1/sagas/{id}/retry"),
    ("get", "/v1/streams/{id}/events"),
]


@pytest.mark.parametrize(("method", "path"), ID_PATHS)
@pytest.mark.parametrize("bad_id", [NOT_AN_ID, LONG_ID + "a" * 100, "é"])
async def test_a_malformed_id_in_a_path_is_a_422(
    client: httpx.AsyncClient, method: str, path: str, bad_id: str
) -> None:
    response = await client.request(method, path.format(id=bad_id))

    location = invalid_fields(response)[0]
    assert location[0] == "path"


@pytest.mark.parametrize(("method", "path"), ID_PATHS)
async def test_an_unknown_well_formed_id_in_a_path_is_a_404(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await client.request(method, path.format(id=f"account-{uuid.uuid4()}"))

    assert_problem(response, 404)


async def test_an_id_with_a_slash_matches_no_route_and_is_a_404(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/v1/accounts/a%2Fb/balance")

    assert_problem(response, 404)


# --- numbers are bounded ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "parameter", "value"),
    [
        ("/v1/accounts", "limit", "0"),
        ("/v1/accounts", "limit", "501"),
        ("/v1/risk/decisions", "limit", "100000000000000000000"),
        ("/v1/sagas", "limit", "-1"),
        ("/v1/transfers/{id}", "wait", "31"),
        ("/v1/trades/{id}", "wait", "-0.5"),
        ("/v1/trades/{id}", "wait", "nan"),
        ("/v1/streams/account-{id}/events", "from_version", "0"),
        ("/v1/streams/account-{id}/events", "from_version", str(2**63)),
    ],
)
async def test_an_out_of_range_number_is_a_422_naming_it(
    client: httpx.AsyncClient, account_id: str, path: str, parameter: str, value: str
) -> None:
    response = await client.get(path.format(id=account_id), params={parameter: value})

    assert invalid_fields(response) == [["query", parameter]]


def a_cursor(kind: str, after: object) -> str:
    # json, not orjson: the key of a forged cursor may be any JSON number, even 10**30.
    return base64.urlsafe_b64encode(json.dumps([kind, after]).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/v1/accounts/{id}/entries", "entries"),
        ("/v1/accounts/{id}/events", "events"),
        ("/v1/risk/decisions", "decisions"),
        ("/v1/transfers", "transfers"),
        ("/v1/trades", "trades"),
    ],
)
@pytest.mark.parametrize("after", [-1, 2**63, 2**64, 10**30])
async def test_a_forged_cursor_beyond_any_position_is_a_422(
    client: httpx.AsyncClient, account_id: str, path: str, kind: str, after: int
) -> None:
    response = await client.get(path.format(id=account_id),
                                params={"cursor": a_cursor(kind, after)})  # fmt: skip

    assert_problem(response, 422, "invalid_cursor")


@pytest.mark.parametrize("as_of", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
async def test_a_time_at_the_ends_of_the_calendar_is_answered_not_a_500(
    client: httpx.AsyncClient, account_id: str, as_of: str
) -> None:
    balance = await client.get(f"/v1/accounts/{account_id}/balance", params={"as_of": as_of})
    entries = await client.get(f"/v1/accounts/{account_id}/entries", params={"as_of": as_of})

    assert balance.status_code in (200, 422), balance.text
    assert entries.status_code in (200, 422), entries.text


# --- bodies that are not JSON, and methods a path does not serve -------------------------


async def test_a_body_that_is_not_utf8_is_a_400_problem(
    client: httpx.AsyncClient, account_id: str
) -> None:
    response = await client.post(f"/v1/accounts/{account_id}/deposits",
                                 content=b'{"amount": "\xff"}',
                                 headers={"Content-Type": "application/json", **a_key()})

    assert_problem(response, 400)


async def test_a_body_that_is_not_json_is_a_422_problem(
    client: httpx.AsyncClient, account_id: str
) -> None:
    response = await client.post(f"/v1/accounts/{account_id}/deposits", content=b"{amount: 1",
                                 headers={"Content-Type": "application/json", **a_key()})

    assert_problem(response, 422, "validation_failed")


async def test_a_method_a_path_does_not_serve_is_a_405_naming_every_method_it_does(
    client: httpx.AsyncClient,
) -> None:
    response = await client.delete("/v1/accounts")

    assert_problem(response, 405)
    allowed = {method.strip() for method in response.headers["allow"].split(",")}
    assert {"GET", "POST"} <= allowed


# --- the OpenAPI tells all of it --------------------------------------------------------


async def test_every_error_answer_is_documented_as_problem_json(
    client: httpx.AsyncClient,
) -> None:
    document = (await client.get("/openapi.json")).json()

    assert "Problem" in document["components"]["schemas"]
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            errors = {status: response for status, response in operation["responses"].items()
                      if int(status) >= 400}  # fmt: skip
            for status, response in errors.items():
                assert list(response["content"]) == [PROBLEM_MEDIA_TYPE], (method, path, status)
            has_input = operation.get("parameters") or "requestBody" in operation
            assert not has_input or "422" in errors, (method, path)
            if "requestBody" in operation:
                assert "400" in errors, (method, path)


async def test_request_bodies_are_documented_as_refusing_unknown_fields(
    client: httpx.AsyncClient,
) -> None:
    document = (await client.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]

    for operations in document["paths"].values():
        for operation in operations.values():
            content = operation.get("requestBody", {}).get("content", {})
            for media in content.values():
                schema = media["schema"]
                for choice in schema.get("anyOf", [schema]):  # an optional body: model or null
                    if "$ref" in choice:
                        name = choice["$ref"].rsplit("/", 1)[-1]
                        assert schemas[name]["additionalProperties"] is False, name


def unbounded(schema: dict[str, Any], components: dict[str, Any], where: str) -> list[str]:
    """Where `schema` lets a string or a number grow without a limit (an id without a
    pattern or a length, a count without a maximum), walking objects, arrays and choices."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return unbounded(components[name], components, where)
    if "anyOf" in schema:  # keywords beside `anyOf` (a header's maxLength) bound each choice
        beside = {key: value for key, value in schema.items() if key != "anyOf"}
        return [found for choice in schema["anyOf"]
                for found in unbounded({**beside, **choice}, components, where)]  # fmt: skip
    kind = schema.get("type")
    if kind == "object":
        return [found for name, field in schema.get("properties", {}).items()
                for found in unbounded(field, components, f"{where}.{name}")]  # fmt: skip
    if kind == "array":
        found = unbounded(schema["items"], components, f"{where}[]")
        return found if "maxItems" in schema else [*found, where]
    if kind == "string" and not ("maxLength" in schema or "enum" in schema
                                 or schema.get("format") == "date-time"
                                 or _is_bounded_pattern(schema.get("pattern", ""))):  # fmt: skip
        return [where]
    if kind in ("integer", "number") and not {"minimum", "maximum"} <= set(schema):
        return [where]
    return []


def _is_bounded_pattern(pattern: str) -> bool:
    """`^[a-z]{1,100}$` bounds a string's length; `^[a-z]+$` does not."""
    return pattern.startswith("^") and pattern.endswith("$") and not set(pattern) & {"+", "*"}


async def test_every_parameter_and_body_field_is_bounded(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    components = document["components"]["schemas"]

    found = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                where = f"{method} {path} {parameter['in']} {parameter['name']}"
                found += unbounded(parameter["schema"], components, where)
            for media in operation.get("requestBody", {}).get("content", {}).values():
                found += unbounded(media["schema"], components, f"{method} {path} body")
    assert found == []


@pytest.mark.parametrize("currency", ["\x00", "US\x00D", "usd", "U"])
async def test_a_malformed_currency_filter_is_a_422_never_a_500(
    client: httpx.AsyncClient, currency: str
) -> None:
    response = await client.get("/v1/accounts", params={"currency": currency})

    assert invalid_fields(response) == [["query", "currency"]]


@pytest.mark.parametrize("key", ["a\x00", "", "not an id", "a" * 101])
async def test_an_accounts_cursor_with_a_key_no_list_gives_out_is_a_422(
    client: httpx.AsyncClient, key: str
) -> None:
    cursor = base64.urlsafe_b64encode(json.dumps(["accounts", key]).encode()).decode()

    response = await client.get("/v1/accounts", params={"cursor": cursor.rstrip("=")})

    assert_problem(response, 422, "invalid_cursor")


@pytest.mark.parametrize("limit", ["0.", "00", "000.000", "-0"])
async def test_a_malformed_zero_overdraft_limit_is_a_422(
    client: httpx.AsyncClient, limit: str
) -> None:
    response = await client.post(
        "/v1/accounts", json={"owner": "o-1", "currency": "USD", "overdraft_limit": limit}
    )

    assert_problem(response, 422)


@pytest.mark.parametrize("limit", ["0", "0.00", None])
async def test_a_zero_overdraft_limit_opens_an_account_without_one(
    client: httpx.AsyncClient, limit: str | None
) -> None:
    response = await client.post(
        "/v1/accounts", json={"owner": "o-1", "currency": "USD", "overdraft_limit": limit}
    )

    assert response.status_code == 201, response.text
    assert response.json()["overdraft_limit"] == "0.00"
