"""Property: whatever batches land in whatever streams, reads return exactly what was appended,
and the hash chains recomputed from the stored rows hold."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventstore import ANY, EventStore, NewEvent, RecordedEvent, verify_chains

# jsonb stores no NUL character and the store refuses floats: everything else is fair game.
json_text = st.text(
    st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=12
)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), json_text)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(json_text, children, max_size=4),
    max_leaves=10,
)
events = st.builds(
    lambda event_type, data: NewEvent(event_type, data),
    st.sampled_from(["Deposited", "Withdrawn", "HoldPlaced", "AccountOpened"]),
    st.dictionaries(json_text, json_values, max_size=5),
)
appends = st.lists(
    st.tuples(st.integers(0, 4), st.lists(events, min_size=1, max_size=6)),
    min_size=1,
    max_size=12,
)


@pytest.fixture(scope="module")
async def shared_store(pool: asyncpg.Pool) -> AsyncIterator[EventStore]:
    name = f"test_{uuid.uuid4().hex[:12]}"
    store = EventStore(pool, name)
    await store.migrate()
    yield store
    await pool.execute(f"drop schema {name} cascade")


async def settled_category(store: EventStore, category: str, count: int) -> list[RecordedEvent]:
    """Read a category once `count` events are settled: a transaction anywhere else on the
    server (another test, a benchmark) holds the xmin horizon back for a moment."""
    for _ in range(1000):
        found = await store.read_category(category)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.01)
    raise AssertionError(f"only {len(found)} of {count} events settled")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=appends)
async def test_reads_return_exactly_what_was_appended(
    shared_store: EventStore, batches: list[tuple[int, list[NewEvent]]]
) -> None:
    store = shared_store
    prefix = uuid.uuid4().hex[:8]
    expected: dict[str, list[NewEvent]] = {}

    for stream_number, batch in batches:
        stream_id = f"s{prefix}-{stream_number}"
        await store.append(stream_id, batch, ANY)
        expected.setdefault(stream_id, []).extend(batch)

    for stream_id, appended in expected.items():
        stored = await store.read_stream(stream_id)
        assert [(e.event_id, e.event_type, e.data) for e in stored] == [
            (e.event_id, e.event_type, dict(e.data)) for e in appended
        ]
        assert [e.stream_version for e in stored] == list(range(1, len(appended) + 1))
        # The hash chain recomputed from what jsonb gives back must equal the one written.
        assert (await verify_chains(store, stream_id)).is_intact
    # This example's streams form one category; read it in commit order as read_all does.
    in_commit_order = await settled_category(store, f"s{prefix}", sum(map(len, expected.values())))
    assert [e.event_id for e in in_commit_order] == [
        event.event_id for _, batch in batches for event in batch
    ]
