"""The account service's saga commands over NATS: reserve, post and void the holds of legs.

    register_commands(service, assets)   # subjects account.reserve, account.post, account.void

Each endpoint decides a batch of commands (those that queued up while the last batch was
served) in the command helper's unit of work: one transaction, the replies recorded with the
effects, a repeated `command_id` answered from the record (docs/command-batching.md). The
batch locks every account it touches in account id order, in one statement, so that
concurrent batches over the same accounts queue instead of failing on a version conflict,
and never deadlock. An account is loaded once, each command and each leg is decided against
the state the earlier ones left, and the account's events are appended once. A domain
refusal becomes a `CommandRefused` with the error's `code`, which undoes that command's
decisions: all its legs or none. `reserve_legs`, `post_legs` and `void_legs` are the same
handlers for one command, which raise the refusal.

An account's state knows only its open holds; how the others ended (posted, voided, or
cancelled by a void that arrived before its reserve) is read from the inline `holds` table
after the accounts are locked, followed through the batch's own decisions, and handed to
the domain's decisions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from types import MappingProxyType
from typing import Any, Final, TypeVar

from account_service import repository
from account_service.contracts import (
    AccountEvent,
    HoldCancelled,
    HoldPlaced,
    HoldPosted,
    HoldSide,
    HoldVoided,
    Leg,
    LegsDone,
    PostLegs,
    ReserveLegs,
    VoidLegs,
    hold_id,
)
from account_service.domain import (
    AccountError,
    AccountNotFound,
    AccountState,
    EndedHolds,
    Hold,
    HoldConflict,
    HoldEnded,
    HoldNotOpen,
    HoldStatus,
    InsufficientFunds,
    fold,
    place_hold,
    post_hold,
    void_hold,
)
from account_service.events import to_new_event
from eventstore import NewEvent, UnitOfWork
from ledger.commands import (
    CommandRefused,
    CommandService,
    Incoming,
    decide_each,
    one_at_a_time,
)
from ledger.money import AmountError, Assets

RESERVE: Final = "reserve"
POST: Final = "post"
VOID: Final = "void"
_SIDES: Final = (HoldSide.DEBIT, HoldSide.CREDIT)
_Legs = ReserveLegs | PostLegs | VoidLegs
LegsT = TypeVar("LegsT", ReserveLegs, PostLegs, VoidLegs)


def register_commands(service: CommandService, assets: Assets) -> None:
    """Serve `reserve`, `post` and `void` on `service` (subjects `<service name>.<command>`),
    each deciding the commands that queue up together in one transaction."""

    async def reserve(
        batch: Sequence[Incoming[ReserveLegs]], unit: UnitOfWork
    ) -> list[LegsDone | CommandRefused]:
        return await reserve_batch(batch, unit, assets)

    service.batch_command(RESERVE, ReserveLegs, LegsDone)(reserve)
    service.batch_command(POST, PostLegs, LegsDone)(post_batch)
    service.batch_command(VOID, VoidLegs, LegsDone)(void_batch)


async def reserve_legs(command: ReserveLegs, unit: UnitOfWork, assets: Assets) -> LegsDone:
    """Place every leg's debit hold on the payer and pending credit on the payee, or none.

    Raises CommandRefused: `unknown_currency`, `same_account`, `duplicate_leg`, or the code
    of the domain's refusal (`insufficient_funds`, `account_frozen`, `account_closed`,
    `currency_mismatch`, `unknown_account`, `hold_ended` for a hold that was posted, voided
    or cancelled, `hold_conflict`, ...). A hold already open on the same terms is a retry
    and is left as it is.
    """
    return await one_at_a_time(partial(reserve_batch, assets=assets))(command, unit)


async def post_legs(command: PostLegs, unit: UnitOfWork) -> LegsDone:
    """Post both holds of every leg: the payer's debit and the payee's credit, exactly.

    A hold that was posted already is a retry and is skipped. Raises CommandRefused
    `hold_voided` for a hold voided (or cancelled by a void that came first), `hold_not_found`
    for one never placed, `hold_conflict` when the open hold's amount is not the leg's or
    its id is on another account, `unknown_account`.
    """
    return await one_at_a_time(post_batch)(command, unit)


async def void_legs(command: VoidLegs, unit: UnitOfWork) -> LegsDone:
    """Release the open holds of every leg; cancel those never placed, so that a reserve
    arriving late (after its saga gave up on it) is refused instead of holding money forever.

    This is the compensation of a reserve, which may have failed part way, not arrived yet,
    or never reached an account (an unknown account has nothing to release or cancel). A
    hold voided or cancelled already is fine. The reply lists the holds this command
    released. Raises CommandRefused `hold_posted` when a hold was posted: past the pivot,
    money is never unposted; `hold_conflict` for a hold id on another account than the leg's.
    """
    return await one_at_a_time(void_batch)(command, unit)


async def reserve_batch(
    batch: Sequence[Incoming[ReserveLegs]], unit: UnitOfWork, assets: Assets
) -> list[LegsDone | CommandRefused]:
    """`reserve_legs` of many commands, decided one after another on the accounts as the
    earlier ones left them, and saved together."""
    return await _decide_batch(batch, unit, partial(_reserve, assets=assets))


async def post_batch(
    batch: Sequence[Incoming[PostLegs]], unit: UnitOfWork
) -> list[LegsDone | CommandRefused]:
    """`post_legs` of many commands, decided in turn and saved together."""
    return await _decide_batch(batch, unit, _post)


async def void_batch(
    batch: Sequence[Incoming[VoidLegs]], unit: UnitOfWork
) -> list[LegsDone | CommandRefused]:
    """`void_legs` of many commands, decided in turn and saved together."""
    return await _decide_batch(batch, unit, _void)


async def _decide_batch(
    batch: Sequence[Incoming[LegsT]], unit: UnitOfWork, decide: Callable[[_Book, LegsT], LegsDone]
) -> list[LegsDone | CommandRefused]:
    """Load the batch's accounts and holds, `decide` each command on them in turn (a refused
    one leaves them as they were), and save what was decided."""
    book = await _Book.load(unit, [incoming.command for incoming in batch])

    def staged(command: LegsT) -> LegsDone:
        with book.staged():
            return decide(book, command)

    results = decide_each(batch, staged)
    await book.save()
    return results


def _reserve(book: _Book, command: ReserveLegs, assets: Assets) -> LegsDone:
    """Place every leg's two holds on the book."""
    _check_legs(command.legs, assets)
    book.require(_accounts_of(command.legs))
    ended = book.ended(command.transfer_id, command.legs)
    placed: list[str] = []
    for leg in command.legs:
        for side in _SIDES:
            hold = _hold_of(command.transfer_id, leg, side)
            book.decide(_account_on(leg, side), leg,
                        partial(place_hold, hold=hold, currency=leg.currency, ended=ended))
            placed.append(hold.hold_id)
    return LegsDone(transfer_id=command.transfer_id, hold_ids=tuple(placed))


def _post(book: _Book, command: PostLegs) -> LegsDone:
    """Post every leg's two holds on the book."""
    _check_distinct(command.legs)
    book.require(_accounts_of(command.legs))
    ended = book.ended(command.transfer_id, command.legs)
    posted: list[str] = []
    for leg in command.legs:
        for side in _SIDES:
            account_id = _account_on(leg, side)
            id_of_hold = hold_id(command.transfer_id, leg.leg_id, side)
            hold = book.state(account_id).open_holds.get(id_of_hold)
            if hold is not None:
                _check_terms(hold, leg, account_id)
            book.decide(account_id, leg, partial(post_hold, hold_id=id_of_hold, ended=ended))
            posted.append(id_of_hold)
    return LegsDone(transfer_id=command.transfer_id, hold_ids=tuple(posted))


def _void(book: _Book, command: VoidLegs) -> LegsDone:
    """Void (or cancel) every leg's two holds on the accounts that exist."""
    _check_distinct(command.legs)
    ended = book.ended(command.transfer_id, command.legs)
    voided: list[str] = []
    for leg in command.legs:
        for side in _SIDES:
            account_id = _account_on(leg, side)
            if not book.exists(account_id):
                continue
            id_of_hold = hold_id(command.transfer_id, leg.leg_id, side)
            decision = partial(void_hold, hold_id=id_of_hold, side=side,
                               transfer_id=command.transfer_id, ended=ended)
            if any(isinstance(e, HoldVoided) for e in book.decide(account_id, leg, decision)):
                voided.append(id_of_hold)
    return LegsDone(transfer_id=command.transfer_id, hold_ids=tuple(voided))


class _Book:
    """The accounts and holds of a batch of commands: locked and loaded once, evolved
    command by command (a refused command leaves them as they were), saved once."""

    def __init__(
        self, unit: UnitOfWork, loaded: dict[str, AccountState],
        holds: dict[str, tuple[str, HoldStatus]],
    ) -> None:
        self._unit = unit
        self._loaded = loaded
        self._states = dict(loaded)
        self._events: dict[str, list[NewEvent]] = {account_id: [] for account_id in loaded}
        self._holds = holds

    @classmethod
    async def load(cls, unit: UnitOfWork, commands: Sequence[_Legs]) -> _Book:
        """Lock and load every account the commands name (in id order; the unknown ones
        are left out), and read how their holds stand from the holds read model.

        The holds are read after the accounts are locked: a hold's row changes only with an
        append to its account, so it agrees with the states loaded (and the append's
        version check would refuse it if not)."""
        account_ids = [a for command in commands for a in _accounts_of(command.legs)]
        loaded = await repository.load_many(unit.store, unit.connection, account_ids)
        rows = await unit.connection.fetch(
            f"select hold_id, account_id, status from {unit.store.schema}.holds"
            " where hold_id = any($1::text[])",
            [hold_id(command.transfer_id, leg.leg_id, side)
             for command in commands for leg in command.legs for side in _SIDES],
        )  # fmt: skip
        holds = {row["hold_id"]: (row["account_id"], HoldStatus(row["status"])) for row in rows}
        return cls(unit, loaded, holds)

    @contextmanager
    def staged(self) -> Iterator[None]:
        """Keep what the block decides only if it raises nothing (one command: all or none)."""
        states, holds = dict(self._states), dict(self._holds)
        lengths = {account_id: len(events) for account_id, events in self._events.items()}
        try:
            yield
        except BaseException:
            self._states, self._holds = states, holds
            for account_id, length in lengths.items():
                del self._events[account_id][length:]
            raise

    def require(self, account_ids: Iterable[str]) -> None:
        """Refuse `unknown_account` for the first of `account_ids` (in id order) not found."""
        for account_id in sorted(set(account_ids)):
            if account_id not in self._states:
                raise _refusal(AccountNotFound(account_id), account_id, None)

    def exists(self, account_id: str) -> bool:
        """Whether the account was found."""
        return account_id in self._states

    def state(self, account_id: str) -> AccountState:
        """The account as the decisions so far left it."""
        return self._states[account_id]

    def ended(self, transfer_id: str, legs: Sequence[Leg]) -> EndedHolds:
        """How the legs' holds that are no longer open ended. Raises CommandRefused
        `hold_conflict` for a hold id on another account than the one its leg names (a
        caller's bug: a hold id is one leg's)."""
        ended: dict[str, HoldStatus] = {}
        for leg in legs:
            for side in _SIDES:
                id_of_hold = hold_id(transfer_id, leg.leg_id, side)
                if id_of_hold not in self._holds:
                    continue
                account_id, status = self._holds[id_of_hold]
                if account_id != _account_on(leg, side):
                    raise CommandRefused(
                        HoldConflict.code,
                        f"hold {id_of_hold} is on account {account_id},"
                        f" not {_account_on(leg, side)}",
                        {"account_id": _account_on(leg, side), "leg_id": leg.leg_id,
                         "hold_id": id_of_hold},
                    )  # fmt: skip
                if status is not HoldStatus.OPEN:
                    ended[id_of_hold] = status
        return MappingProxyType(ended)

    def decide(
        self, account_id: str, leg: Leg, decision: Callable[[AccountState], list[AccountEvent]]
    ) -> list[AccountEvent]:
        """Apply `decision` to the account's current state and return its events (with the
        current context as their metadata); a domain refusal refuses the command."""
        state = self._states[account_id]
        try:
            events = decision(state)
        except AccountError as error:
            raise _refusal(error, account_id, leg) from error
        self._events[account_id].extend(to_new_event(event) for event in events)
        self._states[account_id] = fold(events, state) or state
        for event in events:
            self._follow_hold(account_id, event)
        return events

    async def save(self) -> None:
        """Append each account's new events, all in one round trip, in account id order."""
        await repository.save_many(self._unit, [
            (self._loaded[account_id], account_id, self._events[account_id])
            for account_id in sorted(self._events)
        ])  # fmt: skip

    def _follow_hold(self, account_id: str, event: AccountEvent) -> None:
        """Keep the batch's view of the holds read model current with a decided event."""
        match event:
            case HoldPlaced():
                self._holds[event.hold_id] = (account_id, HoldStatus.OPEN)
            case HoldCancelled():
                self._holds[event.hold_id] = (account_id, HoldStatus.CANCELLED)
            case HoldPosted():
                self._holds[event.hold_id] = (account_id, HoldStatus.POSTED)
            case HoldVoided():
                self._holds[event.hold_id] = (account_id, HoldStatus.VOIDED)


def _check_legs(legs: Sequence[Leg], assets: Assets) -> None:
    """Refuse legs no account could take: unknown currency, one account on both sides."""
    _check_distinct(legs)
    for leg in legs:
        try:
            assets.scale(leg.currency)
        except AmountError as error:
            raise CommandRefused(
                "unknown_currency", str(error), {"leg_id": leg.leg_id, "currency": leg.currency}
            ) from error


def _check_distinct(legs: Sequence[Leg]) -> None:
    """Refuse a leg paying itself, and two legs of one id (they would share holds)."""
    leg_ids: set[str] = set()
    for leg in legs:
        if leg.from_account == leg.to_account:
            raise CommandRefused(
                "same_account", f"leg {leg.leg_id} moves money from {leg.from_account} to itself",
                {"leg_id": leg.leg_id, "account_id": leg.from_account},
            )
        if leg.leg_id in leg_ids:
            raise CommandRefused(
                "duplicate_leg", f"leg {leg.leg_id} appears twice", {"leg_id": leg.leg_id}
            )
        leg_ids.add(leg.leg_id)


def _check_terms(hold: Hold, leg: Leg, account_id: str) -> None:
    """Refuse to post an open hold whose amount is not the leg's (the caller's mistake)."""
    if hold.amount_minor != leg.amount_minor:
        raise CommandRefused(
            "hold_conflict",
            f"hold {hold.hold_id} on account {account_id} is of {hold.amount_minor} minor"
            f" units, leg {leg.leg_id} of {leg.amount_minor}",
            {"account_id": account_id, "leg_id": leg.leg_id, "hold_id": hold.hold_id},
        )


def _refusal(error: AccountError, account_id: str, leg: Leg | None) -> CommandRefused:
    """The typed refusal of a domain error, saying which account (and leg) refused."""
    details: dict[str, Any] = {"account_id": account_id}
    if leg is not None:
        details["leg_id"] = leg.leg_id
    if isinstance(error, InsufficientFunds):
        details["needed_minor"] = error.needed_minor
        details["available_minor"] = error.available_minor
    if isinstance(error, HoldNotOpen | HoldEnded | HoldConflict):
        details["hold_id"] = error.hold_id
    return CommandRefused(error.code, str(error), details)


def _accounts_of(legs: Sequence[Leg]) -> list[str]:
    return [account_id for leg in legs for account_id in (leg.from_account, leg.to_account)]


def _account_on(leg: Leg, side: HoldSide) -> str:
    return leg.from_account if side is HoldSide.DEBIT else leg.to_account


def _hold_of(transfer_id: str, leg: Leg, side: HoldSide) -> Hold:
    return Hold(hold_id(transfer_id, leg.leg_id, side), side, leg.amount_minor, transfer_id,
                leg.kind)
