"""eventstore: append-only event streams in PostgreSQL, shared by every ledger service.

    store = await EventStore.open(dsn, "account")
    result = await store.append("account-1", [NewEvent("AccountOpened", {...})], NO_STREAM)
    events = await store.read_stream("account-1")
    batch = await store.read_all(after=checkpoint)

Everything else a service needs (subscriptions, projections, snapshots, upcasters, the
audit of hash chains) is exported here too; the modules behind it are private detail.
"""

from eventstore.appends import Append
from eventstore.audit import ChainReport, verify_chains
from eventstore.batching import lock_streams, unnest_columns, unnest_placeholders
from eventstore.errors import (
    AppendOnlyViolation,
    ConcurrencyError,
    DuplicateEventError,
    EventStoreError,
    InvalidEvent,
    MigrationError,
    StoreUnavailable,
    StreamNotFound,
    TransientConflict,
)
from eventstore.events import (
    ANY,
    NO_STREAM,
    START,
    STREAM_EXISTS,
    AppendResult,
    Direction,
    NewEvent,
    Position,
    RecordedEvent,
)
from eventstore.hashing import ChainBreak
from eventstore.projections import (
    Projection,
    RebuildReport,
    RowDifference,
    projection_subscription,
    rebuild,
    replay_estimate,
)
from eventstore.snapshots import Snapshot
from eventstore.store import EventStore, UnitOfWork
from eventstore.subscriptions import Handler, Subscription
from eventstore.tracking import (
    StoredResponse,
    mark_all_handled,
    mark_handled,
    record_replies,
    record_reply,
    recorded_replies,
    recorded_reply,
    store_response,
    stored_response,
)
from eventstore.upcasting import Upcasters

__all__ = [
    "ANY",
    "NO_STREAM",
    "START",
    "STREAM_EXISTS",
    "Append",
    "AppendOnlyViolation",
    "AppendResult",
    "ChainBreak",
    "ChainReport",
    "ConcurrencyError",
    "Direction",
    "DuplicateEventError",
    "EventStore",
    "EventStoreError",
    "Handler",
    "InvalidEvent",
    "MigrationError",
    "NewEvent",
    "Position",
    "Projection",
    "RebuildReport",
    "RecordedEvent",
    "RowDifference",
    "Snapshot",
    "StoreUnavailable",
    "StoredResponse",
    "StreamNotFound",
    "Subscription",
    "TransientConflict",
    "UnitOfWork",
    "Upcasters",
    "lock_streams",
    "mark_all_handled",
    "mark_handled",
    "projection_subscription",
    "rebuild",
    "record_replies",
    "record_reply",
    "recorded_replies",
    "recorded_reply",
    "replay_estimate",
    "store_response",
    "stored_response",
    "unnest_columns",
    "unnest_placeholders",
    "verify_chains",
]
