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
handlers for one command, which raise the refusal. The accounts and holds a batch decides
on are its `Book` (`account_service/book.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Final, TypeVar

from account_service.book import SIDES, Book, account_on, accounts_of
from account_service.contracts import (
    HoldSide,
    HoldVoided,
    Leg,
    LegsDone,
    PostLegs,
    ReserveLegs,
    VoidLegs,
    hold_id,
)
from account_service.domain import Hold, place_hold, post_hold, void_hold
from eventstore import UnitOfWork
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
    batch: Sequence[Incoming[LegsT]], unit: UnitOfWork, decide: Callable[[Book, LegsT], LegsDone]
) -> list[LegsDone | CommandRefused]:
    """Load the batch's accounts and holds, `decide` each command on them in turn (a refused
    one leaves them as they were), and save what was decided."""
    book = await Book.load(unit, [incoming.command for incoming in batch])

    def staged(command: LegsT) -> LegsDone:
        with book.staged():
            return decide(book, command)

    results = decide_each(batch, staged)
    await book.save()
    return results


def _reserve(book: Book, command: ReserveLegs, assets: Assets) -> LegsDone:
    """Place every leg's two holds on the book."""
    _check_legs(command.legs, assets)
    book.require(accounts_of(command.legs))
    ended = book.ended(command.transfer_id, command.legs)
    placed: list[str] = []
    for leg in command.legs:
        for side in SIDES:
            hold = _hold_of(command.transfer_id, leg, side)
            book.decide(account_on(leg, side), leg,
                        partial(place_hold, hold=hold, currency=leg.currency, ended=ended))
            placed.append(hold.hold_id)
    return LegsDone(transfer_id=command.transfer_id, hold_ids=tuple(placed))


def _post(book: Book, command: PostLegs) -> LegsDone:
    """Post every leg's two holds on the book."""
    _check_distinct(command.legs)
    book.require(accounts_of(command.legs))
    ended = book.ended(command.transfer_id, command.legs)
    posted: list[str] = []
    for leg in command.legs:
        for side in SIDES:
            account_id = account_on(leg, side)
            id_of_hold = hold_id(command.transfer_id, leg.leg_id, side)
            hold = book.state(account_id).open_holds.get(id_of_hold)
            if hold is not None:
                _check_terms(hold, leg, account_id)
            book.decide(account_id, leg, partial(post_hold, hold_id=id_of_hold, ended=ended))
            posted.append(id_of_hold)
    return LegsDone(transfer_id=command.transfer_id, hold_ids=tuple(posted))


def _void(book: Book, command: VoidLegs) -> LegsDone:
    """Void (or cancel) every leg's two holds on the accounts that exist."""
    _check_distinct(command.legs)
    ended = book.ended(command.transfer_id, command.legs)
    voided: list[str] = []
    for leg in command.legs:
        for side in SIDES:
            account_id = account_on(leg, side)
            if not book.exists(account_id):
                continue
            id_of_hold = hold_id(command.transfer_id, leg.leg_id, side)
            decision = partial(void_hold, hold_id=id_of_hold, side=side,
                               transfer_id=command.transfer_id, ended=ended)
            if any(isinstance(e, HoldVoided) for e in book.decide(account_id, leg, decision)):
                voided.append(id_of_hold)
    return LegsDone(transfer_id=command.transfer_id, hold_ids=tuple(voided))


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


def _hold_of(transfer_id: str, leg: Leg, side: HoldSide) -> Hold:
    return Hold(hold_id(transfer_id, leg.leg_id, side), side, leg.amount_minor, transfer_id,
                leg.kind)
