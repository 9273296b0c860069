"""The saga recorder's group commit, on real PostgreSQL: records that arrive together share
a transaction, and a record that cannot be written fails alone, as it would have alone."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

from eventstore import NO_STREAM, ConcurrencyError, EventStore, InvalidEvent
from saga import log, runs
from saga.contracts import SagaStarted, StepStarted, stream_of
from saga.definition import SETTLE_LEGS
from saga.recorder import LeaseLost, SagaRecorder
from saga.state import SagaState, started
from trade_service.contracts import SettlementLeg

OWNER = "orchestrator-test"
LEG = SettlementLeg(leg_id="leg-1", from_account="a", to_account="b", amount_minor=100,
                    currency="USD")  # fmt: skip


def recorder_of(store: EventStore, lease_until: datetime | None = None) -> SagaRecorder:
    until = lease_until or datetime.now(UTC) + timedelta(seconds=30)
    return SagaRecorder(store, SETTLE_LEGS, OWNER, lambda: until)


async def leased_sagas(store: EventStore, count: int) -> list[SagaState]:
    """`count` started sagas, every one leased to OWNER."""
    states = []
    for _ in range(count):
        event = SagaStarted(saga_id=str(uuid.uuid4()), kind="transfer", legs=(LEG,),
                            deadline_at=datetime.now(UTC) + timedelta(minutes=5))  # fmt: skip
        async with store.unit_of_work() as unit:
            await unit.append(stream_of(event.saga_id), log.new_events((event,), {}), NO_STREAM)
        states.append(started(event))
    due_by = datetime.now(UTC) + timedelta(seconds=1)
    claimed = await runs.claim_due(store.pool, store.schema, OWNER, due_by, 30.0, count)
    assert sorted(claimed) == sorted(state.saga_id for state in states)
    return states


def step_started(step: str = "assess") -> tuple[log.Entry, ...]:
    return log.entries(
        (StepStarted(step=step, command_id=uuid.uuid4(), attempt=1, is_compensation=False),), {}
    )


async def transactions_of(store: EventStore, states: list[SagaState]) -> dict[str, int]:
    """Each saga's events at version 2 (the recorded one): the transaction that wrote it."""
    rows = await store.pool.fetch(
        f"select stream_id, tx_id::text::bigint as tx from {store.schema}.events"
        " where stream_id = any($1::text[]) and stream_version = 2",
        [stream_of(state.saga_id) for state in states],
    )  # fmt: skip
    return {row["stream_id"]: row["tx"] for row in rows}


async def test_records_that_arrive_together_share_a_transaction(saga_store: EventStore) -> None:
    states = await leased_sagas(saga_store, 20)
    lease_until = datetime.now(UTC) + timedelta(minutes=1)
    recorder = recorder_of(saga_store, lease_until)

    after = await asyncio.gather(
        *(recorder.record(state, step_started(), is_leased=True) for state in states)
    )

    assert [state.version for state in after] == [2] * 20
    transactions = await transactions_of(saga_store, states)
    assert len(transactions) == 20
    # All 20 queued before the recorder's writer first ran: one transaction wrote them.
    assert len(set(transactions.values())) == 1
    leases = await saga_store.pool.fetch(
        f"select lease_owner, lease_until from {saga_store.schema}.saga_runs"
    )
    assert {(row["lease_owner"], row["lease_until"]) for row in leases} == {
        (OWNER, lease_until)
    }


async def test_a_record_whose_lease_is_gone_fails_alone(saga_store: EventStore) -> None:
    states = await leased_sagas(saga_store, 6)
    lost = states[3]
    await runs.release_lease(saga_store.pool, saga_store.schema, lost.saga_id, OWNER, None)
    recorder = recorder_of(saga_store)

    outcomes = await asyncio.gather(
        *(recorder.record(state, step_started(), is_leased=True) for state in states),
        return_exceptions=True,
    )

    assert isinstance(outcomes[3], LeaseLost)
    assert all(isinstance(o, SagaState) and o.version == 2 for i, o in enumerate(outcomes)
               if i != 3)  # fmt: skip
    assert await saga_store.stream_version(stream_of(lost.saga_id)) == 1
    assert len(await transactions_of(saga_store, states)) == 5


async def test_a_record_at_a_stale_version_fails_alone(saga_store: EventStore) -> None:
    states = await leased_sagas(saga_store, 6)
    stale = states[2]
    # Another writer appended to this saga since its state was folded.
    await recorder_of(saga_store).record(stale, step_started(), is_leased=True)
    recorder = recorder_of(saga_store)

    outcomes = await asyncio.gather(
        *(recorder.record(state, step_started("reserve"), is_leased=True)
          for state in states),
        return_exceptions=True,
    )  # fmt: skip

    assert isinstance(outcomes[2], ConcurrencyError)
    assert all(isinstance(o, SagaState) and o.version == 2 for i, o in enumerate(outcomes)
               if i != 2)  # fmt: skip
    assert await saga_store.stream_version(stream_of(stale.saga_id)) == 2


async def test_a_record_the_store_refuses_fails_alone(saga_store: EventStore) -> None:
    states = await leased_sagas(saga_store, 5)
    recorder = recorder_of(saga_store)

    outcomes = await asyncio.gather(
        *(recorder.record(state, () if i == 1 else step_started(), is_leased=True)
          for i, state in enumerate(states)),
        return_exceptions=True,
    )  # fmt: skip

    assert isinstance(outcomes[1], InvalidEvent)
    assert all(isinstance(o, SagaState) and o.version == 2 for i, o in enumerate(outcomes)
               if i != 1)  # fmt: skip


async def test_closing_cancels_the_queued_records_and_writes_none(
    saga_store: EventStore,
) -> None:
    states = await leased_sagas(saga_store, 10)
    recorder = recorder_of(saga_store)
    waiting = [asyncio.create_task(recorder.record(state, step_started(), is_leased=True))
               for state in states]  # fmt: skip
    await asyncio.sleep(0)  # every record queued; the writer they started has not run yet

    await recorder.close()
    outcomes = await asyncio.gather(*waiting, return_exceptions=True)

    assert all(isinstance(outcome, asyncio.CancelledError) for outcome in outcomes), outcomes
    assert await transactions_of(saga_store, states) == {}
    # Closed is not dead: the next record starts a writer of its own.
    again = await recorder.record(states[0], step_started(), is_leased=True)
    assert again.version == 2
