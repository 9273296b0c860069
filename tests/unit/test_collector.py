"""The server's collector settings: fewer collections than CPython's defaults."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from ledger.collector import SERVING_THRESHOLDS, tune_for_serving

CPYTHON_DEFAULTS = (700, 10, 10)


@pytest.fixture
def restored_thresholds() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


@pytest.mark.usefixtures("restored_thresholds")
def test_serving_collects_the_young_generation_far_less_often() -> None:
    tune_for_serving()

    assert gc.get_threshold() == SERVING_THRESHOLDS
    assert SERVING_THRESHOLDS[0] >= 50 * CPYTHON_DEFAULTS[0]
    assert gc.isenabled()
