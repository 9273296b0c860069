"""Tracking rows: "this message was handled", "this command was answered so".

Each is written by the caller in the same transaction as the effect it tracks (STYLE 14):
if the effect commits, so does the mark, and a redelivery finds the mark and does nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from eventstore._db import Executor
from eventstore.hashing import canonical_json


async def mark_handled(executor: Executor, schema: str, consumer: str, message_id: str) -> bool:
    """Record that `consumer` handled `message_id`; False when it already had."""
    inserted = await executor.fetchval(
        f"insert into {schema}.inbox (consumer, message_id) values ($1, $2)"
        " on conflict do nothing returning true",
        consumer,
        message_id,
    )
    return bool(inserted)


async def mark_all_handled(
    executor: Executor, schema: str, consumer: str, message_ids: Sequence[str]
) -> set[str]:
    """Record that `consumer` handled each of `message_ids`, in one statement; return the ids
    it had not handled before (an id given twice is new at most once)."""
    rows = await executor.fetch(
        f"insert into {schema}.inbox (consumer, message_id)"
        " select $1, unnest($2::text[]) on conflict do nothing returning message_id",
        consumer,
        sorted(message_ids),  # one order for every writer: two replicas never deadlock
    )
    return {row[0] for row in rows}


class RecordedReply(NamedTuple):
    """The reply recorded for a command, and the endpoint (subject) that gave it."""

    endpoint: str
    reply: dict[str, Any]


async def recorded_reply(
    executor: Executor, schema: str, command_id: uuid.UUID
) -> RecordedReply | None:
    """The reply recorded for `command_id` and its endpoint, or None if it never completed.

    A command id is answered once, by one endpoint: the caller compares the endpoint, so a
    reused id sent to another endpoint is refused rather than answered with this reply.
    """
    row = await executor.fetchrow(
        f"select endpoint, reply from {schema}.command_replies where command_id = $1", command_id
    )
    if row is None:
        return None
    return RecordedReply(row[0], dict(orjson.loads(row[1])))


async def record_reply(
    executor: Executor, schema: str, command_id: uuid.UUID, endpoint: str, reply: dict[str, Any]
) -> bool:
    """Record the reply to `command_id`; False when one was recorded already (keep that one)."""
    inserted = await executor.fetchval(
        f"insert into {schema}.command_replies (command_id, endpoint, reply)"
        " values ($1, $2, $3::jsonb) on conflict do nothing returning true",
        command_id,
        endpoint,
        canonical_json(reply).decode(),
    )
    return bool(inserted)


async def recorded_replies(
    executor: Executor, schema: str, command_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, RecordedReply]:
    """`recorded_reply` of many commands in one statement: those answered already."""
    rows = await executor.fetch(
        f"select command_id, endpoint, reply from {schema}.command_replies"
        " where command_id = any($1::uuid[])",
        list(command_ids),
    )
    return {row[0]: RecordedReply(row[1], dict(orjson.loads(row[2]))) for row in rows}


async def record_replies(
    executor: Executor, schema: str, replies: Sequence[tuple[uuid.UUID, str, dict[str, Any]]]
) -> set[uuid.UUID]:
    """`record_reply` of many `(command_id, endpoint, reply)` in one statement; the ids
    recorded now (one answered already keeps its first reply and is not among them)."""
    ordered = sorted(replies, key=lambda reply: reply[0])  # one order for every writer
    rows = await executor.fetch(
        f"insert into {schema}.command_replies (command_id, endpoint, reply)"
        " select * from unnest($1::uuid[], $2::text[], $3::jsonb[])"
        " on conflict do nothing returning command_id",
        [command_id for command_id, _, _ in ordered],
        [endpoint for _, endpoint, _ in ordered],
        [canonical_json(reply).decode() for _, _, reply in ordered],
    )
    return {row[0] for row in rows}


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """The first answer given to an idempotency key, and what its request looked like."""

    fingerprint: str
    status_code: int
    response: dict[str, Any]


async def stored_response(
    executor: Executor, schema: str, scopes: Sequence[str], key: str, principal: str | None = None
) -> StoredResponse | None:
    """The answer recorded for `key` in the first of `scopes` (e.g. an endpoint and account)
    that has one, or None; a row stored for a principal counts for that `principal` alone
    (rows stored without one, for anyone)."""
    assert not isinstance(scopes, str), "scopes: a sequence of scope names"
    row = await executor.fetchrow(
        f"select fingerprint, status_code, response from {schema}.idempotency_keys"
        " where scope = any($1::text[]) and key = $2"
        " and (principal is null or principal = $3)"
        " order by array_position($1::text[], scope) limit 1",
        list(scopes),
        key,
        principal,
    )
    if row is None:
        return None
    return StoredResponse(row[0], row[1], dict(orjson.loads(row[2])))


async def store_response(
    executor: Executor,
    schema: str,
    scope: str,
    key: str,
    answer: StoredResponse,
    *,
    principal: str | None = None,
    mirror_scope: str | None = None,
) -> bool:
    """Record the answer to `key` in `scope`, for `principal` (None: for anyone); False when
    one was recorded there first (keep that one). With `mirror_scope`, the same answer is
    also recorded there unless a row holds it already (a reader that knows only that scope
    finds it: the previous version, during a rolling upgrade)."""
    scopes = [scope] if mirror_scope is None else [scope, mirror_scope]
    inserted = await executor.fetch(
        f"insert into {schema}.idempotency_keys"
        " (scope, key, fingerprint, status_code, response, principal)"
        " select s, $2, $3, $4, $5::jsonb, $6 from unnest($1::text[]) as s"
        " on conflict do nothing returning scope",
        scopes,
        key,
        answer.fingerprint,
        answer.status_code,
        canonical_json(answer.response).decode(),
        principal,
    )
    return any(row[0] == scope for row in inserted)
