"""The risk service's saga commands over NATS: assess, commit and release movements.

    register_commands(service, defaults, clock)   # subjects risk.assess, risk.commit, risk.release

Each handler runs in the command helper's unit of work (one transaction, the reply recorded
with the effect, a repeated `command_id` answered from the record). A handler takes a
transaction-scoped lock on each paying account's risk stream in account id order, so that
concurrent commands over one account queue instead of failing on a version conflict, and
never deadlock. A payer with several movements is loaded once and each movement is decided
against the state the earlier ones left.

`assess` is all or nothing: every movement is decided in memory first; when all are
approved their `ExposureReserved` events are appended, and when any is refused only the
`MovementRefused` events are (the audit keeps every refusal, and no approval of the others
stands). A refusal is a normal `Decision` reply, not a command refusal, because its event
must commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from typing import Final

from eventstore import UnitOfWork
from ledger.commands import CommandNotReady, CommandService
from risk_service import domain, repository
from risk_service.account_view import account_views
from risk_service.contracts import (
    Assess,
    Commit,
    Decision,
    Limits,
    Movement,
    MovementRefused,
    Release,
    RiskEvent,
)
from risk_service.domain import AccountView, MovementRequest, RiskState
from risk_service.events import stream_of

ASSESS: Final = "assess"
COMMIT: Final = "commit"
RELEASE: Final = "release"

Clock = Callable[[], datetime]
ViewCheck = Callable[[uuid.UUID], Awaitable[bool]]
"""Whether the view of accounts holds every account event published before the command
(by its id) first asked (`account_view.ViewProgress.is_current_for`)."""


def register_commands(
    service: CommandService,
    defaults: Limits,
    clock: Clock,
    view_is_current: ViewCheck | None = None,
) -> None:
    """Serve `<service>.assess`, `<service>.commit` and `<service>.release` on `service`.

    `defaults` are the limits of an account with none of its own; `clock` gives the
    (timezone-aware) time of each decision; `view_is_current` tells whether the view of
    accounts has caught up with the account service's events as of a command (None: assume
    it has).
    """

    @service.command(ASSESS, Assess, Decision)
    async def assess(command: Assess, unit: UnitOfWork) -> Decision:
        return await assess_movements(command, unit, defaults, clock(), view_is_current)

    @service.command(COMMIT, Commit, Decision)
    async def commit(command: Commit, unit: UnitOfWork) -> Decision:
        now, transfer_id = clock(), command.transfer_id
        await _end_each(unit, command.movements,
                        lambda state, leg_id: domain.commit(state, transfer_id, leg_id, now))
        return Decision(transfer_id=command.transfer_id, approved=True)

    @service.command(RELEASE, Release, Decision)
    async def release(command: Release, unit: UnitOfWork) -> Decision:
        await _end_each(unit, command.movements,
                        lambda state, leg_id: domain.release(state, command.transfer_id, leg_id))
        return Decision(transfer_id=command.transfer_id, approved=True)


async def assess_movements(
    command: Assess,
    unit: UnitOfWork,
    defaults: Limits,
    now: datetime,
    view_is_current: ViewCheck | None = None,
) -> Decision:
    """Decide every movement in memory, then append all approvals or only the refusals.

    An account the view does not know, or knows as frozen, is not refused on the view's word
    while the view is still catching up with the events published before the command (an
    account opened or unfrozen a moment ago): CommandNotReady makes the saga ask again.
    """
    movements = command.movements
    payers = await _locked_states(unit, (m.from_account for m in movements))
    parties = {m.from_account for m in movements} | {m.to_account for m in movements}
    views = await account_views(unit.connection, unit.store.schema, parties)
    if (view_is_current is not None and _may_be_stale(parties, views)
            and not await view_is_current(command.command_id)):
        raise CommandNotReady("the view of accounts is catching up with the account service")
    evolved = dict(payers)
    decided: list[tuple[str, RiskEvent]] = []
    for movement in movements:
        request = MovementRequest(
            transfer_id=command.transfer_id, leg_id=movement.leg_id,
            amount_minor=movement.amount_minor, currency=movement.currency,
            payer=views.get(movement.from_account), payee=views.get(movement.to_account),
        )  # fmt: skip
        events = domain.assess(evolved[movement.from_account], request, defaults, now)
        evolved[movement.from_account] = domain.fold(evolved[movement.from_account], events)
        decided.extend((movement.from_account, event) for event in events)
    refusals = [(payer, e) for payer, e in decided if isinstance(e, MovementRefused)]
    await _save_all(unit, payers, refusals or decided)
    if not refusals:
        return Decision(transfer_id=command.transfer_id, approved=True)
    first = refusals[0][1]
    assert isinstance(first, MovementRefused)
    return Decision(
        transfer_id=command.transfer_id, approved=False, reason=first.reason, detail=first.detail
    )


def _may_be_stale(parties: set[str], views: dict[str, AccountView]) -> bool:
    """Whether a refusal would rest on something a newer account event may undo: an account
    not known yet, or known as frozen (an unfreeze may be on its way; closed is final)."""
    return bool(parties - views.keys()) or any(v.status == "frozen" for v in views.values())


async def _end_each(
    unit: UnitOfWork,
    movements: Sequence[Movement],
    end: Callable[[RiskState, str], list[RiskEvent]],
) -> None:
    """Commit or release each movement's exposure on its payer; an ended one is left as is."""
    payers = await _locked_states(unit, (m.from_account for m in movements))
    evolved = dict(payers)
    decided: list[tuple[str, RiskEvent]] = []
    for movement in movements:
        events = end(evolved[movement.from_account], movement.leg_id)
        evolved[movement.from_account] = domain.fold(evolved[movement.from_account], events)
        decided.extend((movement.from_account, event) for event in events)
    await _save_all(unit, payers, decided)


async def _locked_states(unit: UnitOfWork, account_ids: Iterable[str]) -> dict[str, RiskState]:
    """Lock each account's risk stream (in id order, for this transaction), then load it."""
    states: dict[str, RiskState] = {}
    for account_id in sorted(set(account_ids)):
        await unit.connection.execute(
            "select pg_advisory_xact_lock(hashtext($1), hashtext($2))",
            unit.store.schema, stream_of(account_id),
        )
        states[account_id] = await repository.load(unit.store, unit.connection, account_id)
    return states


async def _save_all(
    unit: UnitOfWork, loaded: dict[str, RiskState], decided: Sequence[tuple[str, RiskEvent]]
) -> None:
    """Append each account's events once, against the version it was loaded at."""
    for account_id, state in loaded.items():
        events = [event for payer, event in decided if payer == account_id]
        await repository.save(unit, state, events)
