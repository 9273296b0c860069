"""Settings refuse values the system cannot run with, at startup rather than under load."""

from __future__ import annotations

import pydantic
import pytest

from ledger.settings import MIN_DB_POOL_SIZE, Settings


@pytest.mark.parametrize("size", [0, 1, MIN_DB_POOL_SIZE - 1, 1001])
def test_a_pool_too_small_for_what_it_holds_or_absurdly_large_is_refused(size: int) -> None:
    with pytest.raises(pydantic.ValidationError, match="db_pool_size"):
        Settings(db_pool_size=size)


def test_the_smallest_workable_pool_is_taken() -> None:
    assert Settings(db_pool_size=MIN_DB_POOL_SIZE).db_pool_size == MIN_DB_POOL_SIZE


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"saga_lease_s": 1.0}, "LEDGER_SAGA_LEASE_S must exceed"),
        ({"saga_deadline_s": 1.0}, "LEDGER_SAGA_DEADLINE_S must exceed"),
        ({"saga_backoff_first_s": 60.0}, "LEDGER_SAGA_BACKOFF_FIRST_S may not exceed"),
        ({"task_restart_first_s": 60.0}, "LEDGER_TASK_RESTART_FIRST_S may not exceed"),
        ({"consumer_max_deliver": 2}, "LEDGER_CONSUMER_MAX_DELIVER must exceed"),
        ({"events_stream_max_age_s": 60.0}, "LEDGER_EVENTS_STREAM_MAX_AGE_S may not be below"),
    ],
)
def test_timings_a_component_relies_on_are_checked_when_the_settings_load(
    given: dict[str, float], named: str
) -> None:
    with pytest.raises(pydantic.ValidationError, match=named):
        Settings.model_validate(given)


def test_the_default_timings_are_consistent() -> None:
    settings = Settings()

    assert settings.saga_lease_s > settings.saga_step_timeout_s


def test_an_instrument_scale_that_changes_a_default_currencys_is_refused() -> None:
    # USD amounts are stored in cents: a scale of 0 would make every balance 100 times larger.
    with pytest.raises(pydantic.ValidationError, match="USD has 2 decimals, not 0"):
        Settings(instrument_scales={"ACME": 0, "USD": 0})


def test_an_instrument_scale_may_name_a_default_currency_with_its_own_scale() -> None:
    settings = Settings(instrument_scales={"ACME": 0, "BTC": 8})

    assert settings.assets().scales["BTC"] == 8
