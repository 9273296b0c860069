"""The starter: a batch of the trade service's events starts each requested saga once, in
one append, and a batch with a saga that exists already fails whole, for the consumer to
hand its events over one by one."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from eventstore import ConcurrencyError, EventStore
from ledger.consumers import ConsumedEvent
from saga.starter import SagaStarter
from trade_service.contracts import SettlementLeg, TransferRequested

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
DEADLINE_S = 300.0
LEG = SettlementLeg(leg_id="transfer", from_account="a", to_account="b", amount_minor=100,
                    currency="USD")  # fmt: skip


def consumed(event_type: str, data: dict[str, object], correlation_id: str) -> ConsumedEvent:
    """A trade event as the starter consumer hands it over."""
    transfer_id = str(data.get("transfer_id", uuid.uuid4()))
    return ConsumedEvent(
        event_id=str(uuid.uuid4()), stream_id=f"transfer-{transfer_id}", stream_version=1,
        event_type=event_type, data=data, metadata={"correlation_id": correlation_id},
        recorded_at=NOW, global_position=1, subject=f"ledger.trade.transfer.{event_type}",
        message_id=str(uuid.uuid4()), delivery_count=1,
    )  # fmt: skip


def requested(correlation_id: str = "c-1") -> ConsumedEvent:
    request = TransferRequested(transfer_id=str(uuid.uuid4()), legs=(LEG,), requested_at=NOW)
    return consumed("TransferRequested", request.model_dump(mode="json"), correlation_id)


async def test_a_batch_starts_every_requested_saga_once_in_the_context_of_its_request(
    saga_store: EventStore,
) -> None:
    starter = SagaStarter(saga_store, DEADLINE_S, lambda: NOW)
    first, second = requested("c-first"), requested("c-second")
    other = consumed("TransferCompleted", {"transfer_id": first.data["transfer_id"]}, "c-x")

    async with saga_store.unit_of_work() as unit:
        await starter.start_all(unit.connection, [first, other, second])

    for request, correlation_id in ((first, "c-first"), (second, "c-second")):
        [started] = await saga_store.read_stream(f"saga-{request.data['transfer_id']}")
        assert started.event_type == "SagaStarted"
        deadline_at = datetime.fromisoformat(started.data["deadline_at"])
        assert deadline_at == NOW + timedelta(seconds=DEADLINE_S)
        assert started.metadata["correlation_id"] == correlation_id
        assert started.metadata["causation_id"] == request.event_id
    rows = await saga_store.pool.fetch(
        f"select saga_id, status, version from {saga_store.schema}.saga_runs order by saga_id"
    )
    assert sorted((row["saga_id"], row["status"], row["version"]) for row in rows) == sorted(
        (str(request.data["transfer_id"]), "running", 1) for request in (first, second)
    )


async def test_a_batch_with_a_started_saga_fails_whole_and_one_by_one_skips_it(
    saga_store: EventStore,
) -> None:
    starter = SagaStarter(saga_store, DEADLINE_S, lambda: NOW)
    again, fresh = requested(), requested()
    async with saga_store.unit_of_work() as unit:
        await starter.start_all(unit.connection, [again])

    with pytest.raises(ConcurrencyError):
        async with saga_store.unit_of_work() as unit:
            await starter.start_all(unit.connection, [fresh, again])
    assert await saga_store.stream_version(f"saga-{fresh.data['transfer_id']}") == 0

    async with saga_store.unit_of_work() as unit:  # as the consumer does after the failure
        for event in (fresh, again):
            await starter.start_one(unit.connection, event)
    for event in (fresh, again):
        assert await saga_store.stream_version(f"saga-{event.data['transfer_id']}") == 1
