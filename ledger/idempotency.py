"""HTTP idempotency keys: a request sent twice takes effect once and gets the same answer.

    idempotent = IdempotentRequest.of(request, scope, idempotency_key, body)
    answer = await once(store, idempotent, effect, attempts=5, instance=path)

`effect(unit)` runs in a unit of work and returns the `Answer`; the answer is stored under
the key in that same transaction (STYLE 14), so an effect never commits without its answer
and a key never answers without its effect. A later request with the key and the same
fingerprint gets the stored answer (`is_replay`); with another fingerprint, a 422. Keys are
each principal's own (the token's subject): one customer's key never answers, nor refuses,
another's request.

Which answers are kept: successes, and refusals the ledger decided on the state it saw
(`409`, e.g. insufficient funds), because a retry must not turn a refusal into a success
behind the client's back. A malformed request (`422`) or an unknown resource (`404`) is
not kept: nothing was decided, and the client may correct the request and send it again
with the same key. Nor is a write that lost to concurrent writers on every attempt.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final, TypeVar

import orjson
from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse

from eventstore import (
    ConcurrencyError,
    EventStore,
    StoredResponse,
    TransientConflict,
    UnitOfWork,
    store_response,
    stored_response,
)
from eventstore._db import Executor
from ledger.auth import principal_of
from ledger.problems import PROBLEM_MEDIA_TYPE, Problem, problem_body

IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
REPLAYED_HEADER: Final = "Idempotent-Replayed"
MAX_KEY_CHARS: Final = 200
_KEY_BOUNDS: Final = {"minLength": 1, "maxLength": MAX_KEY_CHARS}
"""What `check_key` enforces, for the OpenAPI (it answers with its own problem code)."""
KEPT_REFUSAL_STATUSES: Final = frozenset({409})
"""Refusals stored under their key like a success (see the module's docstring)."""
_RACES: Final = (ConcurrencyError, TransientConflict)
"""Lost races with concurrent writers: the work runs again from the start, boundedly."""
_BACKOFF_BASE_S: Final = 0.002
_BACKOFF_MAX_S: Final = 0.05

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer as stored under a key: status and JSON body."""

    status_code: int
    body: dict[str, Any]
    is_replay: bool = False

    def response(self) -> JSONResponse:
        """The answer as a response; problem+json for an error, marked when replayed."""
        media_type = PROBLEM_MEDIA_TYPE if self.status_code >= 400 else "application/json"
        headers = {REPLAYED_HEADER: "true"} if self.is_replay else None
        return JSONResponse(
            self.body, status_code=self.status_code, media_type=media_type, headers=headers
        )


@dataclass(frozen=True, slots=True)
class IdempotentRequest:
    """A request under an idempotency key: where the key counts (`scope`, for `principal`
    alone), the key, the fingerprint.

    `legacy_scope` is where an answer stored before keys were each principal's own is
    found (the scope then, without the principal): a client retrying across the upgrade
    gets its answer, not a second movement.
    """

    scope: str
    key: str
    fingerprint: str
    principal: str
    legacy_scope: str

    @classmethod
    def of(
        cls, request: Request, scope: str, key: str, body: Mapping[str, Any], *,
        legacy_scope: str | None = None,
    ) -> IdempotentRequest:
        """The HTTP `request` under `key`, made by the principal the access middleware
        verified; `legacy_scope` defaults to `scope`."""
        return cls(scope, key, fingerprint(request.method, request.url.path, body),
                   principal_of(request).subject, legacy_scope or scope)  # fmt: skip

    @property
    def owned_scope(self) -> str:
        """Where the answer is stored: the scope and the principal (subjects hold no space,
        so no two pairs give one string)."""
        return f"{self.scope} {self.principal}"

    @property
    def scopes(self) -> tuple[str, str]:
        """Where a stored answer is looked for, the principal's own first."""
        return (self.owned_scope, self.legacy_scope)


Effect = Callable[[UnitOfWork], Awaitable[Answer]]


def fingerprint(method: str, path: str, body: Mapping[str, Any]) -> str:
    """sha256 (hex) of the method, the path and the canonical JSON of the (validated) body."""
    canonical = orjson.dumps(
        {"method": method.upper(), "path": path, "body": body}, option=orjson.OPT_SORT_KEYS
    )
    return hashlib.sha256(canonical).hexdigest()


def check_key(key: str | None) -> str:
    """The key if it is 1..200 printable characters; a 422 Problem otherwise (or if missing)."""
    if key is None:
        raise Problem(
            422, f"an {IDEMPOTENCY_HEADER} header is required to move money; send a fresh"
            " unique value (a UUID) per movement and the same value when retrying it",
            code="idempotency_key_required",
        )
    if not 1 <= len(key) <= MAX_KEY_CHARS or not key.isprintable():
        raise Problem(
            422, f"{IDEMPOTENCY_HEADER} must be 1 to {MAX_KEY_CHARS} printable characters",
            code="invalid_idempotency_key",
        )
    return key


# async although they never wait: FastAPI runs a plain `def` dependency in a worker thread.
async def _required_key(
    key: Annotated[str | None, Header(alias=IDEMPOTENCY_HEADER, json_schema_extra=_KEY_BOUNDS)
                   ] = None,
) -> str:
    return check_key(key)


async def _optional_key(
    key: Annotated[str | None, Header(alias=IDEMPOTENCY_HEADER, json_schema_extra=_KEY_BOUNDS)
                   ] = None,
) -> str | None:
    return None if key is None else check_key(key)


IdempotencyKey = Annotated[str, Depends(_required_key)]
"""A route parameter: the request's Idempotency-Key, required (422 problem+json if not)."""
OptionalIdempotencyKey = Annotated[str | None, Depends(_optional_key)]
"""A route parameter: the request's Idempotency-Key if it sent one (checked if so)."""


async def in_unit_of_work(
    store: EventStore, work: Callable[[UnitOfWork], Awaitable[T]], *, attempts: int
) -> T:
    """Run `work` in a unit of work, from the start again while a concurrent writer wins.

    Raises a 409 Problem (`concurrent_update`) after `attempts` lost races, never a 500.
    """
    try:
        return await _retrying(store, work, attempts)
    except _RACES as error:
        raise _lost_races(error, attempts) from error


async def once(
    store: EventStore, request: IdempotentRequest, effect: Effect, *, attempts: int,
    instance: str,
) -> Answer:
    """The effect's answer, applied once per key: the stored answer when the key has one.

    Raises a 422 Problem when the key was used with a different request, the Problems the
    effect raises, and a 409 Problem after `attempts` lost races with concurrent writers.
    """

    async def first_or_replay(unit: UnitOfWork) -> Answer:
        stored = await _stored(unit.connection, store, request)
        if stored is not None:
            return _replay(stored, request)
        answer = await effect(unit)
        if not await _keep(unit.connection, store, request, answer):
            raise _AnsweredFirst  # rolls this attempt back; the first answer stands
        return answer

    try:
        return await _retrying(store, first_or_replay, attempts)
    except _RACES as error:
        raise _lost_races(error, attempts) from error
    except _AnsweredFirst:
        pass
    except Problem as refusal:
        if refusal.status not in KEPT_REFUSAL_STATUSES:
            raise
        answer = Answer(refusal.status, problem_body(
            refusal.status, refusal.detail, refusal.code, instance, **refusal.extensions
        ))
        if await _keep(store.pool, store, request, answer):
            return answer
    stored = await _stored(store.pool, store, request)
    assert stored is not None, "an answer was stored first, and stored answers stay"
    return _replay(stored, request)


class _AnsweredFirst(Exception):
    """A concurrent request with the same key stored its answer first."""


async def _retrying(
    store: EventStore, work: Callable[[UnitOfWork], Awaitable[T]], attempts: int
) -> T:
    assert attempts >= 1, "a write needs at least one attempt"
    for attempt in range(1, attempts + 1):
        try:
            async with store.unit_of_work() as unit:
                return await work(unit)
        except _RACES:
            if attempt == attempts:
                raise
            # Jitter, so the writers that lost together do not collide again together.
            delay_s = min(_BACKOFF_MAX_S, _BACKOFF_BASE_S * 2**attempt)
            await asyncio.sleep(random.uniform(0, delay_s))
    raise AssertionError("unreachable: the last attempt returns or raises")


async def _keep(
    executor: Executor, store: EventStore, request: IdempotentRequest, answer: Answer
) -> bool:
    stored = StoredResponse(request.fingerprint, answer.status_code, answer.body)
    return await store_response(executor, store.schema, request.owned_scope, request.key, stored,
                                principal=request.principal, mirror_scope=request.legacy_scope)


async def _stored(
    executor: Executor, store: EventStore, request: IdempotentRequest
) -> StoredResponse | None:
    return await stored_response(executor, store.schema, request.scopes, request.key,
                                 request.principal)  # fmt: skip


def _replay(stored: StoredResponse, request: IdempotentRequest) -> Answer:
    if stored.fingerprint != request.fingerprint:
        raise Problem(
            422, f"{IDEMPOTENCY_HEADER} {request.key!r} was used with a different request;"
            " use a new key for a new request",
            code="idempotency_key_reused",
        )
    return Answer(stored.status_code, stored.response, is_replay=True)


def _lost_races(error: ConcurrencyError | TransientConflict, attempts: int) -> Problem:
    stream = {"stream_id": error.stream_id} if isinstance(error, ConcurrencyError) else {}
    return Problem(
        409, f"the account changed concurrently on {attempts} attempts; retry the request"
        " (with the same Idempotency-Key, if it has one)",
        code="concurrent_update", **stream,
    )
