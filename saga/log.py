"""The saga log in PostgreSQL: one stream per saga, read and folded whole, appended to at
the version it was folded to. `saga.runs` indexes it for the workers (`saga_runs`)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from eventstore import Append, EventStore, NewEvent, RecordedEvent, UnitOfWork
from saga.contracts import SagaEvent, SagaRetried, SagaStatus, event_of, stream_of
from saga.definition import SagaDefinition
from saga.state import SagaState, evolve_all, fold

_PAGE_EVENTS: Final = 1_000


@dataclass(frozen=True, slots=True)
class LoadedSaga:
    """A saga's log and its fold."""

    state: SagaState
    events: tuple[RecordedEvent, ...]


async def load(store: EventStore, definition: SagaDefinition, saga_id: str) -> LoadedSaga:
    """The saga's whole log, folded; raises StreamNotFound for an unknown saga."""
    recorded: list[RecordedEvent] = []
    while True:
        page = await store.read_stream(
            stream_of(saga_id), from_version=len(recorded) + 1, limit=_PAGE_EVENTS
        )
        recorded.extend(page)
        if len(page) < _PAGE_EVENTS:
            break
    state = fold(definition, (event_of(e.event_type, e.data) for e in recorded))
    assert state.version == len(recorded), "one version per event"
    return LoadedSaga(state, tuple(recorded))


@dataclass(frozen=True, slots=True)
class Entry:
    """A saga event to append with its own metadata, under an id known before the append:
    the command a StepStarted announces names that id as its cause (docs/causation.md)."""

    event: SagaEvent
    metadata: dict[str, Any]
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)


def entries(events: Iterable[SagaEvent], metadata: dict[str, Any]) -> tuple[Entry, ...]:
    """`events` to append, each with `metadata`."""
    return tuple(Entry(event, metadata) for event in events)


def new_events(events: Sequence[SagaEvent], metadata: dict[str, Any]) -> list[NewEvent]:
    """The saga events as events to append."""
    return _appended(entries(events, metadata))


def _appended(to_append: Sequence[Entry]) -> list[NewEvent]:
    return [
        NewEvent(
            entry.event.event_type, entry.event.model_dump(mode="json"), entry.metadata,
            entry.event_id,
        )
        for entry in to_append
    ]


async def record(
    unit: UnitOfWork, definition: SagaDefinition, state: SagaState, to_append: Sequence[Entry]
) -> SagaState:
    """Append the entries at the version `state` was folded to; raises ConcurrencyError when
    another writer appended first. Returns the state after them."""
    return (await record_many(unit, definition, [(state, to_append)]))[0]


async def record_many(
    unit: UnitOfWork,
    definition: SagaDefinition,
    records: Sequence[tuple[SagaState, Sequence[Entry]]],
) -> list[SagaState]:
    """`record` for several sagas in one round trip: each (state, entries) appended at the
    version its state was folded to. The first that meets another writer raises
    ConcurrencyError, and the transaction must then be rolled back."""
    await unit.append_many([
        Append(stream_of(state.saga_id), _appended(to_append), state.version)
        for state, to_append in records
    ])  # fmt: skip
    return [
        evolve_all(definition, state, [entry.event for entry in to_append])
        for state, to_append in records
    ]


class NotParked(Exception):
    """An operator retried a saga that is not parked (`requires_intervention`)."""

    def __init__(self, saga_id: str, status: SagaStatus) -> None:
        super().__init__(f"saga {saga_id} is {status}, not parked")
        self.saga_id = saga_id
        self.status = status


async def retry_parked(
    store: EventStore,
    definition: SagaDefinition,
    saga_id: str,
    by: str,
    metadata: dict[str, Any],
) -> SagaState:
    """The operator's retry (HTTP and CLI alike): record SagaRetried on a parked saga, so its
    failed step is tried afresh. Raises StreamNotFound for an unknown saga, NotParked, and
    ConcurrencyError when the saga changed meanwhile."""
    loaded = await load(store, definition, saga_id)
    if loaded.state.status is not SagaStatus.REQUIRES_INTERVENTION:
        raise NotParked(saga_id, loaded.state.status)
    async with store.unit_of_work() as unit:
        return await record(unit, definition, loaded.state,
                            entries((SagaRetried(by=by),), metadata))  # fmt: skip
