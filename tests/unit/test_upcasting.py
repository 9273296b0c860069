"""Upcasters: chained shape by shape, a no-op when none matches, one per shape."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from eventstore import RecordedEvent, Upcasters
from eventstore.hashing import GENESIS_HASH


def recorded(
    event_type: str, data: dict[str, Any], metadata: dict[str, Any] | None = None
) -> RecordedEvent:
    return RecordedEvent(
        global_position=1,
        stream_id="account-1",
        stream_version=1,
        event_id=uuid.uuid4(),
        event_type=event_type,
        data=data,
        metadata=metadata or {},
        recorded_at=datetime(2024, 1, 1, tzinfo=UTC),
        tx_id=1,
        hash=GENESIS_HASH,
        prev_hash=GENESIS_HASH,
    )


def v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {"amount_minor": data["amount"]}


def v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "currency": "USD"}


@pytest.fixture
def upcasters() -> Upcasters:
    registry = Upcasters()
    registry.register("Deposited", 1, v1_to_v2)
    registry.register("Deposited", 2, v2_to_v3)
    return registry


def test_upcasters_chain_to_the_newest_shape(upcasters: Upcasters) -> None:
    event = recorded("Deposited", {"amount": 5})

    upcast = upcasters.upcast(event)

    assert upcast.data == {"amount_minor": 5, "currency": "USD"}
    assert upcast.metadata == {"schema_version": 3}
    assert (upcast.event_id, upcast.hash) == (event.event_id, event.hash)


def test_upcasting_starts_at_the_events_own_version(upcasters: Upcasters) -> None:
    event = recorded("Deposited", {"amount_minor": 5}, {"schema_version": 2, "actor": "a"})

    upcast = upcasters.upcast(event)

    assert upcast.data == {"amount_minor": 5, "currency": "USD"}
    assert upcast.metadata == {"schema_version": 3, "actor": "a"}


def test_upcasting_leaves_the_original_event_as_it_was(upcasters: Upcasters) -> None:
    event = recorded("Deposited", {"amount": 5})

    upcasters.upcast(event)

    assert (event.data, event.metadata) == ({"amount": 5}, {})


@pytest.mark.parametrize(
    "event",
    [
        recorded("Deposited", {"amount_minor": 5, "currency": "USD"}, {"schema_version": 3}),
        recorded("Withdrawn", {"amount": 5}),
    ],
    ids=["newest shape", "other type"],
)
def test_an_event_no_upcaster_matches_is_returned_as_is(
    upcasters: Upcasters, event: RecordedEvent
) -> None:
    assert upcasters.upcast(event) is event


def test_an_empty_registry_returns_the_event_as_is() -> None:
    event = recorded("Deposited", {"amount": 5})

    assert Upcasters().upcast(event) is event


def test_a_shape_cannot_be_registered_twice(upcasters: Upcasters) -> None:
    with pytest.raises(ValueError, match="already registered"):
        upcasters.register("Deposited", 1, v2_to_v3)
