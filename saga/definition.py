"""Saga definitions as data: ordered steps, each a command to a participant, with its
compensation, and a pivot after which the saga only goes forward.

    SETTLE_LEGS: risk assess -> account reserve -> [pivot] account post -> risk commit
                 -> trade complete;  compensations: account void, risk release, and a final
                 notice to the trade service, reject (a refusal) or fail (gave up).

One definition serves transfers (one leg) and trades (two legs): every command is built
from the saga's legs. A step's command id is derived from the saga id, the step and the
operator-retry series, so a resend after a crash or a timeout carries the same id and a
participant applies it at most once.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal

from pydantic import BaseModel

from account_service.contracts import (
    EntryKind,
    Leg,
    LegsDone,
    MovementKind,
    PostLegs,
    ReserveLegs,
    VoidLegs,
)
from ledger.commands import Command
from risk_service.contracts import Assess, Commit, Decision, Movement, Release
from trade_service.contracts import (
    CompleteSettlement,
    FailSettlement,
    RejectSettlement,
    SettlementLeg,
    SettlementOutcome,
)

_COMMAND_NAMESPACE: Final = uuid.UUID("5f0c8a53-8e1e-4d0c-9a57-3f1b6a1f2c10")
_MAX_REASON_CHARS: Final = 100
_MAX_DETAIL_CHARS: Final = 1000
_KINDS: Final[dict[str, MovementKind]] = {"transfer": EntryKind.TRANSFER, "trade": EntryKind.TRADE}
Participant = Literal["account", "risk", "trade"]


@dataclass(frozen=True, slots=True)
class Participants:
    """The NATS service name of each participant (its commands are `<name>.<command>`)."""

    account: str = "account"
    risk: str = "risk"
    trade: str = "trade"

    def name_of(self, participant: Participant) -> str:
        """The service name that serves `participant`'s commands."""
        return str(getattr(self, participant))


@dataclass(frozen=True, slots=True)
class StepInput:
    """What a step's command is built from."""

    saga_id: str
    legs: tuple[SettlementLeg, ...]
    reason: str | None = None
    detail: str | None = None


CommandBuilder = Callable[[StepInput, uuid.UUID], Command]
RefusalOf = Callable[[BaseModel], tuple[str, str | None] | None]
"""A reply that is a refusal (code, detail), or None; most participants refuse by
CommandRefused, risk by a Decision that is not approved."""


def _never_refused(_: BaseModel) -> tuple[str, str | None] | None:
    return None


@dataclass(frozen=True, slots=True)
class Step:
    """One command of a saga: where it goes, how it is built, how its reply is read."""

    name: str
    participant: Participant
    command: str
    build: CommandBuilder
    reply_model: type[BaseModel]
    compensation: str | None = None
    refusal_of: RefusalOf = _never_refused

    def subject(self, participants: Participants) -> str:
        """The NATS subject this step's command is sent to."""
        return f"{participants.name_of(self.participant)}.{self.command}"


@dataclass(frozen=True, slots=True)
class SagaDefinition:
    """Forward steps in order, the pivot among them, and the compensating steps by name.

    `reject` and `fail` name the compensating step that ends a refused or abandoned saga
    (after every other compensation)."""

    name: str
    steps: tuple[Step, ...]
    pivot: str
    compensations: Mapping[str, Step]
    reject: str
    fail: str

    def __post_init__(self) -> None:
        names = [step.name for step in self.steps]
        assert len(set(names)) == len(names), "step names are unique"
        assert self.pivot in names, "the pivot is one of the steps"
        for step in self.steps:
            assert step.compensation is None or step.compensation in self.compensations
        assert self.reject in self.compensations, "the reject notice is a compensating step"
        assert self.fail in self.compensations, "the fail notice is a compensating step"
        pivot_index = names.index(self.pivot)
        assert all(s.compensation is None for s in self.steps[pivot_index:]), (
            "steps from the pivot on are never compensated"
        )

    def step(self, name: str) -> Step:
        """The forward or compensating step called `name`."""
        for step in self.steps:
            if step.name == name:
                return step
        return self.compensations[name]

    def is_before_pivot(self, name: str) -> bool:
        """Whether forward step `name` comes before the pivot (so it may be compensated)."""
        names = [step.name for step in self.steps]
        return names.index(name) < names.index(self.pivot)


def command_id(saga_id: str, step: str, series: int) -> uuid.UUID:
    """The id of `step`'s command in `saga_id`: the same for every resend of one series
    (a new series starts only when an operator retries a parked saga)."""
    return uuid.uuid5(_COMMAND_NAMESPACE, f"{saga_id}/{step}/{series}")


def _legs(given: StepInput) -> tuple[Leg, ...]:
    return tuple(
        Leg(leg_id=leg.leg_id, from_account=leg.from_account, to_account=leg.to_account,
            amount_minor=leg.amount_minor, currency=leg.currency, kind=_KINDS[leg.kind])
        for leg in given.legs
    )  # fmt: skip


def _movements(given: StepInput) -> tuple[Movement, ...]:
    return tuple(
        Movement(leg_id=leg.leg_id, from_account=leg.from_account, to_account=leg.to_account,
                 amount_minor=leg.amount_minor, currency=leg.currency)
        for leg in given.legs
    )  # fmt: skip


def _reason(given: StepInput) -> str:
    return (given.reason or "unspecified")[:_MAX_REASON_CHARS]


def _detail(given: StepInput) -> str | None:
    return None if given.detail is None else given.detail[:_MAX_DETAIL_CHARS]


def _risk_refusal(reply: BaseModel) -> tuple[str, str | None] | None:
    assert isinstance(reply, Decision), "risk answers a Decision"
    if reply.approved:
        return None
    return (str(reply.reason or "refused_by_risk"), reply.detail)


def _settle_legs() -> SagaDefinition:
    def assess(given: StepInput, cid: uuid.UUID) -> Command:
        return Assess(command_id=cid, transfer_id=given.saga_id, movements=_movements(given))

    def commit(given: StepInput, cid: uuid.UUID) -> Command:
        return Commit(command_id=cid, transfer_id=given.saga_id, movements=_movements(given))

    def release(given: StepInput, cid: uuid.UUID) -> Command:
        return Release(command_id=cid, transfer_id=given.saga_id, movements=_movements(given))

    def reserve(given: StepInput, cid: uuid.UUID) -> Command:
        return ReserveLegs(command_id=cid, transfer_id=given.saga_id, legs=_legs(given))

    def post(given: StepInput, cid: uuid.UUID) -> Command:
        return PostLegs(command_id=cid, transfer_id=given.saga_id, legs=_legs(given))

    def void(given: StepInput, cid: uuid.UUID) -> Command:
        return VoidLegs(command_id=cid, transfer_id=given.saga_id, legs=_legs(given))

    def complete(given: StepInput, cid: uuid.UUID) -> Command:
        return CompleteSettlement(command_id=cid, transfer_id=given.saga_id)

    def reject(given: StepInput, cid: uuid.UUID) -> Command:
        return RejectSettlement(command_id=cid, transfer_id=given.saga_id,
                                reason=_reason(given), detail=_detail(given))  # fmt: skip

    def fail(given: StepInput, cid: uuid.UUID) -> Command:
        return FailSettlement(command_id=cid, transfer_id=given.saga_id,
                              reason=_reason(given), detail=_detail(given))  # fmt: skip

    compensations = {
        "release": Step("release", "risk", "release", release, Decision),
        "void": Step("void", "account", "void", void, LegsDone),
        "reject": Step("reject", "trade", "reject", reject, SettlementOutcome),
        "fail": Step("fail", "trade", "fail", fail, SettlementOutcome),
    }
    steps = (
        Step("assess", "risk", "assess", assess, Decision, "release", _risk_refusal),
        Step("reserve", "account", "reserve", reserve, LegsDone, "void"),
        Step("post", "account", "post", post, LegsDone),
        Step("commit", "risk", "commit", commit, Decision, refusal_of=_risk_refusal),
        Step("complete", "trade", "complete", complete, SettlementOutcome),
    )
    return SagaDefinition("settle legs", steps, "post", MappingProxyType(compensations),
                          reject="reject", fail="fail")  # fmt: skip


SETTLE_LEGS: Final = _settle_legs()
