"""Risk per account: limits, exposures and decisions, as a fold of events. Pure: no I/O.

Outflow is counted in one-minute buckets over a rolling 24 hours and movements in
one-second buckets over a rolling minute, so the state stays bounded however busy the
account (at most 1,440 + 60 buckets), and the window is checked conservatively: a bucket
that straddles the window's edge counts whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType
from typing import Final

from risk_service.contracts import (
    AccountBlocked,
    AccountUnblocked,
    ExposureCancelled,
    ExposureCommitted,
    ExposureReleased,
    ExposureReserved,
    Limits,
    LimitsSet,
    MovementRefused,
    RefusalReason,
    RiskEvent,
)

OUTFLOW_WINDOW_MINUTES: Final = 24 * 60
VELOCITY_WINDOW_S: Final = 60


@dataclass(frozen=True, slots=True)
class AccountView:
    """What risk knows of an account from the account service's events."""

    account_id: str
    currency: str
    status: str  # "open", "frozen" or "closed"


@dataclass(frozen=True, slots=True)
class Exposure:
    """An approved movement that has neither happened nor been released yet."""

    exposure_id: str
    amount_minor: int


@dataclass(frozen=True, slots=True)
class RiskState:
    """One account's limits, block, open exposures and recent outflow."""

    account_id: str
    limits: Limits = field(default_factory=Limits)
    blocked_reason: str | None = None
    open_exposures: MappingProxyType[str, Exposure] = field(
        default_factory=lambda: MappingProxyType({})
    )
    outflow_by_minute: MappingProxyType[int, int] = field(
        default_factory=lambda: MappingProxyType({})
    )
    approvals_by_second: MappingProxyType[int, int] = field(
        default_factory=lambda: MappingProxyType({})
    )
    version: int = 0

    @property
    def open_exposure_minor(self) -> int:
        """The sum of approved movements not yet committed or released."""
        return sum(exposure.amount_minor for exposure in self.open_exposures.values())

    def outflow_minor(self, now: datetime) -> int:
        """Committed outflow in the 24 hours up to `now`."""
        # The bucket OUTFLOW_WINDOW_MINUTES before now's straddles the window's start: it
        # counts whole (conservative), or outflow late in that minute would escape the limit.
        first = _minute(now) - OUTFLOW_WINDOW_MINUTES
        return sum(amount for minute, amount in self.outflow_by_minute.items() if minute >= first)

    def movements_last_minute(self, now: datetime) -> int:
        """Approvals in the minute up to `now`."""
        first = _second(now) - VELOCITY_WINDOW_S  # straddles the window's start: counts
        return sum(count for second, count in self.approvals_by_second.items() if second >= first)


def exposure_id(transfer_id: str, leg_id: str) -> str:
    """The id of one leg's exposure on its paying account."""
    return f"{transfer_id}:{leg_id}"


def initial_state(account_id: str) -> RiskState:
    """An account risk has never seen: default limits, nothing open."""
    return RiskState(account_id)


# --- decisions -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MovementRequest:
    """One leg to assess on its paying account."""

    transfer_id: str
    leg_id: str
    amount_minor: int
    currency: str
    payer: AccountView | None
    payee: AccountView | None


def assess(
    state: RiskState,
    movement: MovementRequest,
    defaults: Limits,
    now: datetime,
    *,
    is_cancelled: bool = False,
) -> list[RiskEvent]:
    """Approve (reserving exposure) or refuse one movement: either way, an event.

    A movement whose exposure is already open was approved before: nothing more happens.
    One whose exposure was cancelled (`is_cancelled`: released before this assessment
    arrived) is refused: its saga gave up on it, and nobody would release it.
    """
    limits = state.limits.over(defaults)
    if exposure_id(movement.transfer_id, movement.leg_id) in state.open_exposures:
        return []
    refusal = (
        (RefusalReason.CANCELLED, "released before it was assessed: its saga gave up on it")
        if is_cancelled
        else _refusal(state, movement, limits, now)
    )
    if refusal is None:
        return [ExposureReserved(transfer_id=movement.transfer_id, leg_id=movement.leg_id,
                                amount_minor=movement.amount_minor, currency=movement.currency,
                                decided_at=now, limits=limits)]
    reason, detail = refusal
    return [MovementRefused(transfer_id=movement.transfer_id, leg_id=movement.leg_id,
                           amount_minor=movement.amount_minor, currency=movement.currency,
                           reason=reason, detail=detail, decided_at=now, limits=limits)]


def commit(state: RiskState, transfer_id: str, leg_id: str, now: datetime) -> list[RiskEvent]:
    """The movement happened; committing twice changes nothing."""
    exposure = state.open_exposures.get(exposure_id(transfer_id, leg_id))
    if exposure is None:
        return []
    return [ExposureCommitted(transfer_id=transfer_id, leg_id=leg_id,
                              amount_minor=exposure.amount_minor, committed_at=now)]


def release(
    state: RiskState, transfer_id: str, leg_id: str, now: datetime, *, is_cancelled: bool = False
) -> list[RiskEvent]:
    """The movement will not happen: release its open exposure. With none open, cancel it,
    so that an assessment arriving late (after its saga gave up on it) is refused instead of
    reserving exposure for ever; cancelling twice (`is_cancelled`) changes nothing."""
    exposure = state.open_exposures.get(exposure_id(transfer_id, leg_id))
    if exposure is not None:
        return [ExposureReleased(transfer_id=transfer_id, leg_id=leg_id,
                                 amount_minor=exposure.amount_minor)]  # fmt: skip
    if is_cancelled:
        return []
    return [ExposureCancelled(transfer_id=transfer_id, leg_id=leg_id, cancelled_at=now)]


def set_limits(state: RiskState, limits: Limits) -> list[RiskEvent]:
    """Replace the account's limits (unset ones fall back to the defaults)."""
    return [] if limits == state.limits else [LimitsSet(limits=limits)]


def block(state: RiskState, reason: str) -> list[RiskEvent]:
    """Refuse every movement of the account until unblocked."""
    return [] if state.blocked_reason is not None else [AccountBlocked(reason=reason)]


def unblock(state: RiskState, reason: str) -> list[RiskEvent]:
    """Assess the account's movements again."""
    return [AccountUnblocked(reason=reason)] if state.blocked_reason is not None else []


def _refusal(
    state: RiskState, movement: MovementRequest, limits: Limits, now: datetime
) -> tuple[RefusalReason, str] | None:
    for view, role in ((movement.payer, "paying"), (movement.payee, "receiving")):
        if view is None:
            return RefusalReason.UNKNOWN_ACCOUNT, f"the {role} account is unknown to risk"
        if view.status == "closed":
            return RefusalReason.ACCOUNT_CLOSED, f"the {role} account {view.account_id} is closed"
        if view.status == "frozen":
            return RefusalReason.ACCOUNT_FROZEN, f"the {role} account {view.account_id} is frozen"
        if view.currency != movement.currency:
            return RefusalReason.CURRENCY_MISMATCH, (
                f"the {role} account holds {view.currency}, not {movement.currency}"
            )
    return _limit_refusal(state, movement.amount_minor, limits, now)


def _limit_refusal(
    state: RiskState, amount_minor: int, limits: Limits, now: datetime
) -> tuple[RefusalReason, str] | None:
    if state.blocked_reason is not None:
        return RefusalReason.ACCOUNT_BLOCKED, f"blocked: {state.blocked_reason}"
    if _exceeds(amount_minor, limits.max_transfer_minor):
        return RefusalReason.LIMIT_EXCEEDED, (
            f"{amount_minor} exceeds the per-movement limit of {limits.max_transfer_minor}"
        )
    # Open exposures count toward the daily outflow too: each may still commit.
    outgoing = state.outflow_minor(now) + state.open_exposure_minor
    if _exceeds(outgoing + amount_minor, limits.daily_outflow_minor):
        return RefusalReason.DAILY_OUTFLOW_EXCEEDED, (
            f"{outgoing} already out or on its way in 24 hours;"
            f" limit {limits.daily_outflow_minor}"
        )
    open_minor = state.open_exposure_minor
    if _exceeds(open_minor + amount_minor, limits.max_open_exposure_minor):
        return RefusalReason.EXPOSURE_EXCEEDED, (
            f"{open_minor} already open; limit {limits.max_open_exposure_minor}"
        )
    recent = state.movements_last_minute(now)
    if _exceeds(recent + 1, limits.max_movements_per_minute):
        return RefusalReason.VELOCITY, (
            f"{recent} movements in the last minute; limit {limits.max_movements_per_minute}"
        )
    return None


# --- the fold --------------------------------------------------------------------------


def evolve(state: RiskState, event: RiskEvent) -> RiskState:
    """The state after `event`; the only way risk state changes."""
    state = replace(state, version=state.version + 1)
    match event:
        case LimitsSet():
            return replace(state, limits=event.limits)
        case AccountBlocked():
            return replace(state, blocked_reason=event.reason)
        case AccountUnblocked():
            return replace(state, blocked_reason=None)
        case ExposureReserved():
            return _reserved(state, event)
        case MovementRefused() | ExposureCancelled():
            return state
        case ExposureCommitted():
            return _ended(state, event.transfer_id, event.leg_id, committed_at=event.committed_at)
        case ExposureReleased():
            return _ended(state, event.transfer_id, event.leg_id, committed_at=None)
    raise AssertionError(f"unknown risk event {event!r}")


def fold(state: RiskState, events: list[RiskEvent]) -> RiskState:
    """Evolve `state` through `events`."""
    for event in events:
        state = evolve(state, event)
    return state


def _reserved(state: RiskState, event: ExposureReserved) -> RiskState:
    key = exposure_id(event.transfer_id, event.leg_id)
    assert key not in state.open_exposures, "an exposure is reserved once"
    exposures = {**state.open_exposures, key: Exposure(key, event.amount_minor)}
    second = _second(event.decided_at)
    approvals = _recent({**state.approvals_by_second}, second - VELOCITY_WINDOW_S)
    approvals[second] = approvals.get(second, 0) + 1
    return replace(state, open_exposures=MappingProxyType(exposures),
                   approvals_by_second=MappingProxyType(approvals))


def _ended(
    state: RiskState, transfer_id: str, leg_id: str, *, committed_at: datetime | None
) -> RiskState:
    key = exposure_id(transfer_id, leg_id)
    exposure = state.open_exposures.get(key)
    assert exposure is not None, "an exposure ends once, after it was reserved"
    exposures = {k: v for k, v in state.open_exposures.items() if k != key}
    state = replace(state, open_exposures=MappingProxyType(exposures))
    if committed_at is None:
        return state
    minute = _minute(committed_at)
    outflow = _recent({**state.outflow_by_minute}, minute - OUTFLOW_WINDOW_MINUTES)
    outflow[minute] = outflow.get(minute, 0) + exposure.amount_minor
    return replace(state, outflow_by_minute=MappingProxyType(outflow))


def _exceeds(value: int, limit: int | None) -> bool:
    return limit is not None and value > limit


def _recent(buckets: dict[int, int], first: int) -> dict[int, int]:
    """The buckets from `first` on: the older ones can no longer fall in any later window."""
    return {key: value for key, value in buckets.items() if key >= first}


def _minute(moment: datetime) -> int:
    return int(moment.timestamp()) // 60


def _second(moment: datetime) -> int:
    return int(moment.timestamp())
