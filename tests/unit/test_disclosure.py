"""What a reader may see of who did what: the request identity in event metadata, and the
operator named in a transfer's steps (docs/auth.md, "Who did what"), without a server."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

import orjson

from ledger.auth import Principal, Scope, metadata_for
from trade_service.access import as_readable
from trade_service.views import RETRIED, Step, Transfer

AT: Final = datetime(2026, 1, 2, tzinfo=UTC)
BOBS_REQUEST: Final = {
    "actor": "bob-phone", "correlation_id": "bob-order-1", "causation_id": "e-1",
    "traceparent": f"00-{'a' * 32}-{'b' * 16}-01", "schema_version": 2,
}  # fmt: skip
ALICE: Final = Principal("alice-phone", frozenset({Scope.ACCOUNTS_READ}), owner="alice")
BACK_OFFICE: Final = Principal("auditor", frozenset({Scope.ACCOUNTS_READ}))


def test_a_reader_bound_to_no_owner_sees_all_the_metadata() -> None:
    assert metadata_for(BACK_OFFICE, BOBS_REQUEST) == BOBS_REQUEST


def test_an_owner_sees_the_metadata_of_its_own_requests() -> None:
    alices_request = {**BOBS_REQUEST, "actor": "alice-phone"}

    assert metadata_for(ALICE, alices_request) == alices_request


def test_an_owner_sees_nothing_of_anothers_request_but_the_events_shape() -> None:
    assert metadata_for(ALICE, BOBS_REQUEST) == {"schema_version": 2}
    assert metadata_for(ALICE, {"correlation_id": "no-actor"}) == {}


def _transfer_retried_by(operator: str) -> tuple[Transfer, dict[str, Any]]:
    steps = [Step(seq=1, step="post", outcome="failed", at=AT, detail="timeout"),
             Step(seq=2, step="saga", outcome=RETRIED, at=AT, detail=f"by {operator}")]
    view = Transfer(id="t-1", status="completed", reason=None, detail=None, legs=[],
                    steps=steps, created_at=AT, updated_at=AT, from_account="a-1",
                    to_account="b-1", amount="1.00", currency="USD", reference=None)
    legs = [{"leg_id": "transfer", "from_account": "a-1", "to_account": "b-1",
             "amount_minor": 100, "currency": "USD"}]
    return view, {"legs": orjson.dumps(legs)}


def test_an_owner_does_not_read_which_operator_retried_its_transfer() -> None:
    view, row = _transfer_retried_by("ops-jane")

    as_payer = as_readable(view, row, frozenset({"a-1"}))
    as_back_office = as_readable(view, row, None)

    assert [step.detail for step in as_payer.steps] == ["timeout", None]
    assert as_back_office == view
