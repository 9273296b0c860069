"""The risk service's saga commands over NATS: assess, commit and release movements.

    register_commands(service, defaults, clock)   # subjects risk.assess, risk.commit, risk.release

Each endpoint decides a batch of commands (those that queued up while the last batch was
served) in the command helper's unit of work: one transaction, the replies recorded with the
effects, a repeated `command_id` answered from the record (docs/command-batching.md). The
batch locks every paying account's risk stream in account id order, in one statement, so
that concurrent batches over one account queue instead of failing on a version conflict, and
never deadlock. The payers are loaded once, each command and each of its movements is
decided against the state the earlier ones left, and each payer's events are appended once.
The clock is read once per batch: every command of a batch is decided at the same moment.

`assess` is all or nothing per command: every movement is decided in memory first; when all
are approved their `ExposureReserved` events are kept, and when any is refused only the
`MovementRefused` events are (the audit keeps every refusal, and no approval of the others
stands). A refusal is a normal `Decision` reply, not a command refusal, because its event
must commit. `assess_movements` is the same decision for one command.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import partial
from typing import Final, Protocol

from eventstore import NewEvent, UnitOfWork
from ledger.commands import (
    CommandNotReady,
    CommandRefused,
    CommandService,
    Incoming,
    decide_each,
    one_at_a_time,
)
from risk_service import domain, repository
from risk_service.account_view import account_views
from risk_service.cancellations import cancelled_among
from risk_service.contracts import (
    Assess,
    Commit,
    Decision,
    ExposureCancelled,
    Limits,
    Movement,
    MovementRefused,
    Release,
    RiskEvent,
)
from risk_service.domain import AccountView, MovementRequest, RiskState
from risk_service.events import to_new_event

ASSESS: Final = "assess"
COMMIT: Final = "commit"
RELEASE: Final = "release"

Clock = Callable[[], datetime]
Results = list[Decision | CommandRefused]
"""A batch handler's answers: risk never refuses a command, so each is a `Decision`."""
_Movements = Assess | Commit | Release
_Decide = Callable[[RiskState, Movement], list[RiskEvent]]
"""One movement's events on its payer's state."""


class ViewCheck(Protocol):
    """Whether the view of accounts holds every account event published before a command
    (by its id) first asked (`account_view.ViewProgress`)."""

    def is_known_current(self, command_id: uuid.UUID) -> bool:
        """Whether that is known already, without I/O: asked inside the batch's transaction."""

    async def is_current_for(self, command_id: uuid.UUID) -> bool:
        """Find out (it may ask NATS) and remember: asked with no transaction open."""


def register_commands(
    service: CommandService,
    defaults: Limits,
    clock: Clock,
    view: ViewCheck | None = None,
) -> None:
    """Serve `<service>.assess`, `<service>.commit` and `<service>.release` on `service`,
    each deciding the commands that queue up together in one transaction.

    `defaults` are the limits of an account with none of its own; `clock` gives the
    (timezone-aware) time of each batch's decisions; `view` tells whether the view of
    accounts has caught up with the account service's events as of a command (None: assume
    it has).
    """

    async def assess(batch: Sequence[Incoming[Assess]], unit: UnitOfWork) -> Results:
        return await assess_batch(batch, unit, defaults, clock(), view)

    async def commit(batch: Sequence[Incoming[Commit]], unit: UnitOfWork) -> Results:
        return await commit_batch(batch, unit, clock())

    async def release(batch: Sequence[Incoming[Release]], unit: UnitOfWork) -> Results:
        return await release_batch(batch, unit, clock())

    service.batch_command(ASSESS, Assess, Decision)(assess)
    service.batch_command(COMMIT, Commit, Decision)(commit)
    service.batch_command(RELEASE, Release, Decision)(release)


async def assess_movements(
    command: Assess,
    unit: UnitOfWork,
    defaults: Limits,
    now: datetime,
    view: ViewCheck | None = None,
) -> Decision:
    """Decide every movement in memory, then append all approvals or only the refusals:
    `assess_batch` of one command, in the context bound by the caller.

    An account the view does not know, or knows as frozen, is not refused on the view's word
    while the view is still catching up with the events published before the command (an
    account opened or unfrozen a moment ago): CommandNotReady makes the saga ask again.
    """
    assess = partial(assess_batch, defaults=defaults, now=now, view=view)
    return await one_at_a_time(assess)(command, unit)


async def assess_batch(
    batch: Sequence[Incoming[Assess]],
    unit: UnitOfWork,
    defaults: Limits,
    now: datetime,
    view: ViewCheck | None = None,
) -> Results:
    """`assess_movements` of many commands, decided one after another on the payers as the
    earlier ones left them, all at `now`, and saved together.

    Raises CommandNotReady when the view may be behind for any command of the batch (the
    service then serves each alone, so only that one is asked again); the view is asked
    only about the commands whose decision rests on it.
    """
    commands = [incoming.command for incoming in batch]
    book = await _Book.load(unit, commands, with_cancellations=True)
    parties = [a for command in commands for a in _parties_of(command)]
    views = await account_views(unit.connection, unit.store.schema, parties)
    _require_current_view(commands, views, view)

    def assess(command: Assess) -> Decision:
        return _assess(book, command, views, defaults, now)

    results: Results = decide_each(batch, assess)
    await book.save()
    return results


async def commit_batch(
    batch: Sequence[Incoming[Commit]], unit: UnitOfWork, now: datetime
) -> Results:
    """The movements happened: commit each one's open exposure on its payer (its outflow
    counted at `now`); an exposure ended already is left as it is."""
    book = await _Book.load(unit, [incoming.command for incoming in batch])

    def commit(command: Commit) -> Decision:
        book.decide_in_turn(command.movements, lambda state, movement: domain.commit(
            state, command.transfer_id, movement.leg_id, now))  # fmt: skip
        return Decision(transfer_id=command.transfer_id, approved=True)

    results: Results = decide_each(batch, commit)
    await book.save()
    return results


async def release_batch(
    batch: Sequence[Incoming[Release]], unit: UnitOfWork, now: datetime
) -> Results:
    """The movements will not happen: release each one's open exposure on its payer, or
    cancel it when none is open (its assessment may still arrive, and is then refused); an
    exposure cancelled already is left as it is."""
    commands = [incoming.command for incoming in batch]
    book = await _Book.load(unit, commands, with_cancellations=True)

    def release(command: Release) -> Decision:
        book.decide_in_turn(command.movements, lambda state, movement: domain.release(
            state, command.transfer_id, movement.leg_id, now,
            is_cancelled=book.is_cancelled(command.transfer_id, movement.leg_id)))  # fmt: skip
        return Decision(transfer_id=command.transfer_id, approved=True)

    results: Results = decide_each(batch, release)
    await book.save()
    return results


def _assess(
    book: _Book, command: Assess, views: dict[str, AccountView], defaults: Limits,
    now: datetime,
) -> Decision:
    """Decide every movement of one command; keep all approvals or only the refusals."""

    def assess(state: RiskState, movement: Movement) -> list[RiskEvent]:
        request = MovementRequest(
            transfer_id=command.transfer_id, leg_id=movement.leg_id,
            amount_minor=movement.amount_minor, currency=movement.currency,
            payer=views.get(movement.from_account), payee=views.get(movement.to_account),
        )  # fmt: skip
        is_cancelled = book.is_cancelled(command.transfer_id, movement.leg_id)
        return domain.assess(state, request, defaults, now, is_cancelled=is_cancelled)

    decided = book.decided_in_turn(command.movements, assess)
    refusals = [(payer, e) for payer, e in decided if isinstance(e, MovementRefused)]
    for payer, event in refusals or decided:
        book.record(payer, [event])
    if not refusals:
        return Decision(transfer_id=command.transfer_id, approved=True)
    first = refusals[0][1]
    assert isinstance(first, MovementRefused)
    return Decision(
        transfer_id=command.transfer_id, approved=False, reason=first.reason, detail=first.detail
    )


def _require_current_view(
    commands: Sequence[Assess], views: dict[str, AccountView], view: ViewCheck | None
) -> None:
    """Raise CommandNotReady for the first command whose refusal could rest on a view not
    known to hold the account events published before it.

    Only what is known already is asked here, in the transaction, with the payers locked:
    finding out asks NATS, which must hold no lock nor connection for as long as it takes.
    So the command is not ready, with a catch-up the service runs once this transaction has
    rolled back; when the view turns out current, the command runs again, and reads the
    view anew, after the consumer has handled what it had to."""
    if view is None:
        return
    for command in commands:
        if (_may_be_stale(_parties_of(command), views)
                and not view.is_known_current(command.command_id)):  # fmt: skip
            raise CommandNotReady("the view of accounts is catching up with the account service",
                                  catch_up=partial(view.is_current_for, command.command_id))


def _may_be_stale(parties: set[str], views: dict[str, AccountView]) -> bool:
    """Whether a refusal would rest on something a newer account event may undo: an account
    not known yet, or known as frozen (an unfreeze may be on its way; closed is final)."""
    return any(party not in views or views[party].status == "frozen" for party in parties)


def _parties_of(command: Assess) -> set[str]:
    """Every account a command's movements pay from or to."""
    return {a for m in command.movements for a in (m.from_account, m.to_account)}


class _Book:
    """The payers of a batch of commands: locked and loaded once, evolved command by
    command, and saved once."""

    def __init__(
        self, unit: UnitOfWork, loaded: dict[str, RiskState], cancelled: set[str]
    ) -> None:
        self._unit = unit
        self._loaded = loaded
        self._states = dict(loaded)
        self._events: dict[str, list[NewEvent]] = {account_id: [] for account_id in loaded}
        self._cancelled = cancelled

    @classmethod
    async def load(
        cls, unit: UnitOfWork, commands: Sequence[_Movements], *, with_cancellations: bool = False
    ) -> _Book:
        """Lock and load every paying account of the commands (in account id order); with
        `with_cancellations`, also read which of their exposures were cancelled.

        The cancellations are read after the payers are locked: an exposure is cancelled
        only by an append to its payer's stream, so what is read agrees with the states."""
        payers = [m.from_account for command in commands for m in command.movements]
        loaded = await repository.load_many(unit.store, unit.connection, payers)
        cancelled: set[str] = set()
        if with_cancellations:
            ids = [domain.exposure_id(command.transfer_id, m.leg_id)
                   for command in commands for m in command.movements]  # fmt: skip
            cancelled = await cancelled_among(unit.connection, unit.store.schema, ids)
        return cls(unit, loaded, cancelled)

    def is_cancelled(self, transfer_id: str, leg_id: str) -> bool:
        """Whether the leg's exposure was cancelled (by a release that found none open),
        before this batch or by an earlier command of it."""
        return domain.exposure_id(transfer_id, leg_id) in self._cancelled

    def decided_in_turn(
        self, movements: Sequence[Movement], decide: _Decide
    ) -> list[tuple[str, RiskEvent]]:
        """Each movement's events on its payer, `(payer, event)`, each decided on the state
        the earlier ones left; the book itself is left as it is."""
        evolved: dict[str, RiskState] = {}
        decided: list[tuple[str, RiskEvent]] = []
        for movement in movements:
            payer = movement.from_account
            state = evolved.get(payer, self._states[payer])
            events = decide(state, movement)
            evolved[payer] = domain.fold(state, events)
            decided.extend((payer, event) for event in events)
        return decided

    def decide_in_turn(self, movements: Sequence[Movement], decide: _Decide) -> None:
        """`decided_in_turn`, every event kept."""
        for payer, event in self.decided_in_turn(movements, decide):
            self.record(payer, [event])

    def record(self, account_id: str, events: Sequence[RiskEvent]) -> None:
        """Keep the account's `events` (with the current context as their metadata) and
        fold them into its state."""
        self._events[account_id].extend(to_new_event(event) for event in events)
        self._states[account_id] = domain.fold(self._states[account_id], list(events))
        for event in events:
            if isinstance(event, ExposureCancelled):
                self._cancelled.add(domain.exposure_id(event.transfer_id, event.leg_id))

    async def save(self) -> None:
        """Append each payer's new events, all in one round trip, in account id order."""
        await repository.save_many(self._unit, [
            (self._loaded[account_id], self._events[account_id])
            for account_id in sorted(self._events)
        ])  # fmt: skip
