"""The saga's HTTP routes: inspect one saga with its steps, list sagas by status, and the
operator's retry of a parked saga. Every error is problem+json."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from eventstore import RecordedEvent
from ledger import context
from ledger.dependencies import runtime_of
from ledger.host import Runtime
from ledger.problems import Problem, problem_responses
from saga import log, runs
from saga.contracts import SagaStatus
from saga.definition import SETTLE_LEGS
from trade_service.contracts import SettlementLeg

ID_PATTERN: Final = r"^[A-Za-z0-9_.:-]{1,100}$"
MAX_PAGE_ITEMS: Final = 500
_OUTCOMES: Final = {"StepSucceeded": "succeeded", "StepRefused": "refused", "StepFailed": "failed"}

SagaRuntime = Annotated[Runtime, Depends(runtime_of("saga"))]
SagaIdPath = Annotated[str, Path(pattern=ID_PATTERN)]
router = APIRouter(prefix="/v1/sagas", tags=["sagas"], responses=problem_responses(422, 503))


class StepView(BaseModel):
    """One attempt of one step: its command id, and how it ended (None: in flight)."""

    step: str
    command_id: uuid.UUID
    attempt: int
    is_compensation: bool
    started_at: datetime
    outcome: str | None = None
    detail: str | None = None
    ended_at: datetime | None = None


class SagaView(BaseModel):
    saga_id: str
    kind: str
    status: SagaStatus
    legs: tuple[SettlementLeg, ...]
    deadline_at: datetime
    reason: str | None
    detail: str | None
    last_error: str | None
    retry_at: datetime | None
    version: int
    steps: list[StepView]


class SagaSummary(BaseModel):
    saga_id: str
    kind: str
    status: SagaStatus
    reason: str | None
    last_error: str | None
    next_attempt_at: datetime | None
    started_at: datetime
    updated_at: datetime


class SagaPage(BaseModel):
    items: list[SagaSummary]
    next_after: str | None


class RetryRequest(BaseModel):
    """Who sends the saga on, when the request carries no authenticated actor."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    by: Annotated[str, Field(min_length=1, max_length=100)] | None = None


@router.get("/{saga_id}", responses=problem_responses(404))
async def get_saga(saga_id: SagaIdPath, runtime: SagaRuntime) -> SagaView:
    """The saga, its status, and every attempt of every step. 404 for an unknown saga."""
    return _view(await log.load(runtime.store, SETTLE_LEGS, saga_id))


@router.get("")
async def list_sagas(
    runtime: SagaRuntime,
    status: SagaStatus | None = None,
    after: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_ITEMS)] = 50,
) -> SagaPage:
    """Sagas in id order, of one status if given; page on with `after=next_after`."""
    rows = await runs.list_runs(runtime.store.pool, runtime.store.schema, status, after, limit)
    items = [SagaSummary.model_validate(row) for row in rows]
    next_after = items[-1].saga_id if len(items) == limit else None
    return SagaPage(items=items, next_after=next_after)


@router.post("/{saga_id}/retry", responses=problem_responses(404, 409))
async def retry_saga(
    saga_id: SagaIdPath, runtime: SagaRuntime, body: RetryRequest | None = None
) -> SagaView:
    """Send a parked (`requires_intervention`) saga on: its failed step is tried afresh.

    409 when the saga is not parked, or changed meanwhile."""
    by = context.current().actor or (body.by if body and body.by else "operator")
    try:
        await log.retry_parked(runtime.store, SETTLE_LEGS, saga_id, by,
                               context.current().as_metadata())  # fmt: skip
    except log.NotParked as error:
        raise Problem(409, str(error), code="not_parked") from error
    return _view(await log.load(runtime.store, SETTLE_LEGS, saga_id))


def _view(loaded: log.LoadedSaga) -> SagaView:
    state = loaded.state
    return SagaView(
        saga_id=state.saga_id, kind=state.kind, status=state.status, legs=state.legs,
        deadline_at=state.deadline_at, reason=state.reason, detail=state.detail,
        last_error=state.last_error, retry_at=state.retry_at, version=state.version,
        steps=_steps(loaded.events),
    )  # fmt: skip


def _steps(events: tuple[RecordedEvent, ...]) -> list[StepView]:
    steps: list[StepView] = []
    for event in events:
        data: dict[str, Any] = event.data
        if event.event_type == "StepStarted":
            steps.append(StepView(step=data["step"], command_id=data["command_id"],
                                  attempt=data["attempt"], is_compensation=data["is_compensation"],
                                  started_at=event.recorded_at))  # fmt: skip
        elif event.event_type in _OUTCOMES and steps:
            detail = data.get("error") or data.get("detail") or data.get("code")
            steps[-1] = steps[-1].model_copy(update={
                "outcome": _OUTCOMES[event.event_type], "detail": detail,
                "ended_at": event.recorded_at,
            })  # fmt: skip
    return steps
