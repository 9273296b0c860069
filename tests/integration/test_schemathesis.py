"""The whole ledger against its own OpenAPI: schemathesis sends generated requests, valid and
not (its examples, coverage and fuzzing phases), to every operation of the running system,
all four services behind one HTTP port of a real `ledger up` process, with an admin token,
and checks every answer: no 5xx, a documented status code and content type, a body that
matches the documented schema, schema-invalid input refused, a 405 naming the methods that
are allowed, and no operation answering without a token.

One check is left out: `positive_data_acceptance` (every schema-valid request is a 2xx).
A schema cannot say everything the ledger checks: an opaque cursor must be one the list gave
out, a currency must be one the ledger knows, an amount must fit its currency's decimals;
those are 422s by design, which the other checks hold to the documented problem shape.

The schema is the app's own document, built at import (the pytest plugin needs it at
collection); `test_the_running_ledger_serves_the_document_that_is_fuzzed` shows it is the
one the running ledger serves.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any, Final

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.checks import negative_data_rejection, positive_data_acceptance

from ledger.host import Service, ServiceHost
from ledger.http import create_app
from ledger.services import available_services
from tests.integration.authorized import bearer
from tests.integration.whole_ledger import ledger_settings, ledger_up

MAX_EXAMPLES: Final = 10
"""Fuzzed examples per operation: the run stays within seconds in CI. Raise it locally for a
deeper search (150 found nothing more, in a minute and a half)."""
MAX_WAIT_S: Final = 30
SETTLE_WAITS: Final = 4
"""How many `?wait=30` reads a seeded transfer gets to settle: the saga starter of a new
ledger first reads every trade event the session's servers kept, other tests' too."""
STREAMING_PATHS: Final = r"^/v1/streams/"
"""An event stream on a real stream never ends: it is fuzzed with unknown ids only."""
SETTINGS: Final = ledger_settings(
    "postgresql://given-by-the-fixture", "nats://given-by-the-fixture", f"f{secrets.token_hex(4)}_"
)
"""The ledger's settings but for its servers: the token secret is known at import."""
AUTH: Final = bearer(SETTINGS)


def _services() -> list[Service]:
    return list(available_services().values())


OPENAPI: Final = create_app(ServiceHost(SETTINGS, _services())).openapi()


class AdminToken:
    """An admin token on every request but those schemathesis sends without one on purpose
    (a negative case, or the `ignored_auth` check), which must be refused."""

    def get(self, case: Case[Any], context: schemathesis.AuthContext) -> str:
        return AUTH["Authorization"]

    def set(self, case: Case[Any], data: str, context: schemathesis.AuthContext) -> None:
        case.headers["Authorization"] = data


def _schema(phases: list[str]) -> schemathesis.BaseSchema:
    loaded = schemathesis.openapi.from_dict(OPENAPI)
    loaded.config.phases.update(phases=phases)
    loaded.auth()(AdminToken)
    return loaded


schema = _schema(["examples", "coverage", "fuzzing"])
"""Every operation, every phase: examples, the boundaries of each schema, then random."""
real_schema = _schema(["fuzzing"])
"""Operations on one resource, with the id of a real one: random requests only (the
boundaries of the id are the random-id run's)."""


@pytest.fixture(scope="module")
async def ledger_url(
    database_url: str, nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    """`ledger up`, every service in one process of its own (not a thread of this one: its
    use of the `random` module would disturb Hypothesis, and the GIL would slow both)."""
    settings_ = SETTINGS.model_copy(update={"database_url": database_url, "nats_url": nats_url})
    async with ledger_up(settings_, tmp_path_factory.mktemp("ledger-up")) as url:
        yield url


@pytest.fixture(scope="module")
def real_ids(ledger_url: str) -> dict[str, str]:
    """Ids of resources that exist, by path parameter name: an account with money on it,
    a settled transfer and a settled trade (each also a saga)."""
    with httpx.Client(base_url=ledger_url, headers=AUTH, timeout=MAX_WAIT_S + 10) as client:
        payer, payee = _account(client, "USD", "100.00"), _account(client, "USD", None)
        seller_asset, buyer_asset = _account(client, "ACME", "10"), _account(client, "ACME", None)
        transfer = _settled(client, "transfers", {
            "from_account": payer, "to_account": payee, "amount": "1.00", "currency": "USD"})
        trade = _settled(client, "trades", {
            "instrument": "ACME", "quantity": "1", "price": "2.50", "currency": "USD",
            "buyer": {"cash_account": payer, "asset_account": buyer_asset},
            "seller": {"cash_account": payee, "asset_account": seller_asset},
        })  # fmt: skip
    return {"account_id": payer, "transfer_id": transfer, "trade_id": trade, "saga_id": transfer}


def _account(client: httpx.Client, currency: str, deposit: str | None) -> str:
    opened = client.post("/v1/accounts", json={"owner": "fuzz", "currency": currency})
    assert opened.status_code == 201, opened.text
    account_id: str = opened.json()["id"]
    if deposit is not None:
        deposited = client.post(f"/v1/accounts/{account_id}/deposits", json={"amount": deposit},
                                headers={"Idempotency-Key": secrets.token_hex(8)})  # fmt: skip
        assert deposited.status_code == 201, deposited.text
    return account_id


def _settled(client: httpx.Client, kind: str, body: dict[str, Any]) -> str:
    requested = client.post(f"/v1/{kind}", json=body,
                            headers={"Idempotency-Key": secrets.token_hex(8)})  # fmt: skip
    assert requested.status_code == 202, requested.text
    settlement_id: str = requested.json()["id"]
    # A pending one would hold every fuzzed `?wait=N` read for N seconds.
    for _ in range(SETTLE_WAITS):
        read = client.get(f"/v1/{kind}/{settlement_id}", params={"wait": MAX_WAIT_S})
        if read.json()["status"] != "pending":
            return settlement_id
    raise AssertionError(f"{kind} {settlement_id} is still pending: {read.text}")


def test_the_running_ledger_serves_the_document_that_is_fuzzed(ledger_url: str) -> None:
    served = httpx.get(f"{ledger_url}/openapi.json")

    assert served.json() == OPENAPI


FUZZ_SETTINGS: Final = settings(
    max_examples=MAX_EXAMPLES, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)  # fmt: skip


@schema.parametrize()
@FUZZ_SETTINGS
def test_every_answer_conforms_to_the_openapi(case: Case[Any], ledger_url: str) -> None:
    case.call_and_validate(base_url=ledger_url, excluded_checks=[positive_data_acceptance])


@real_schema.exclude(path_regex=STREAMING_PATHS).include(path_regex=r"\{").parametrize()
@FUZZ_SETTINGS
def test_every_answer_about_real_resources_conforms_to_the_openapi(
    case: Case[Any], ledger_url: str, real_ids: dict[str, str]
) -> None:
    # A negative case may have made its id the invalid part: with a real id in its place the
    # request is valid, so `negative_data_rejection` cannot judge it; the random-id run does.
    for name in list(case.path_parameters or {}):
        case.path_parameters[name] = real_ids[name]
    case.call_and_validate(base_url=ledger_url,
                           excluded_checks=[positive_data_acceptance, negative_data_rejection])
