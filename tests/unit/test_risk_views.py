"""The risk API's limits read from decimal strings, without servers."""

from __future__ import annotations

import pydantic
import pytest

from ledger.money import AmountError, Assets
from risk_service.contracts import Limits
from risk_service.views import SetLimits, limits_of

SMALL_MOVEMENTS = Assets(max_amount_minor=1_000_000)
"""A ledger that moves at most 10,000.00 USD per request."""


def test_a_daily_or_open_limit_may_exceed_what_one_movement_may_move() -> None:
    body = SetLimits(max_transfer="10000.00", daily_outflow="50000.00",
                     max_open_exposure="30000.00")  # fmt: skip

    limits = limits_of(body, SMALL_MOVEMENTS, "USD")

    assert limits == Limits(max_transfer_minor=1_000_000, daily_outflow_minor=5_000_000,
                            max_open_exposure_minor=3_000_000)  # fmt: skip


@pytest.mark.parametrize(
    "body",
    [SetLimits(max_transfer="10000.01"), SetLimits(daily_outflow="10000000000000000.01"),
     SetLimits(max_open_exposure="10000000000000000.01")],
)
def test_a_limit_beyond_its_maximum_is_refused(body: SetLimits) -> None:
    with pytest.raises(AmountError, match="exceeds the maximum"):
        limits_of(body, SMALL_MOVEMENTS, "USD")


@pytest.mark.parametrize("count", [True, "5", 5.0])
def test_a_movements_count_is_a_json_integer(count: object) -> None:
    with pytest.raises(pydantic.ValidationError):
        SetLimits.model_validate({"max_movements_per_minute": count})
