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
