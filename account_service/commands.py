"""The account service's saga commands over NATS: reserve, post and void the holds of legs.

    register_commands(service, assets)   # subjects account.reserve, account.post, account.void

Each handler runs in the command helper's unit of work (one transaction, the reply recorded
with the effect, a repeated `command_id` answered from the record). A handler locks the
accounts it touches in account id order, so that concurrent commands over the same accounts
queue instead of failing on a version conflict, and never deadlock. An account appearing in
several legs is loaded once, each leg is decided against the state the earlier legs left,
and its events are appended once. A domain refusal becomes a `CommandRefused` with the
error's `code`, which rolls the whole command back: all legs or none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from enum import StrEnum
from functools import partial
from typing import Any, Final

from account_service import repository
from account_service.contracts import (
    AccountEvent,
    HoldSide,
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
    Hold,
    InsufficientFunds,
    fold,
    place_hold,
    post_hold,
    void_hold,
)
from account_service.events import stream_of
from eventstore import UnitOfWork
from ledger.commands import CommandRefused, CommandService
from ledger.money import AmountError, Assets

RESERVE: Final = "reserve"
POST: Final = "post"
VOID: Final = "void"
_SIDES: Final = (HoldSide.DEBIT, HoldSide.CREDIT)


class HoldEnd(StrEnum):
    """How a hold that is no longer open ended, if it ever existed."""

    POSTED = "posted"
    VOIDED = "voided"
    NEVER_PLACED = "never_placed"


def register_commands(service: CommandService, assets: Assets) -> None:
    """Serve `reserve`, `post` and `void` on `service` (subjects `<service name>.<command>`)."""

    async def reserve(command: ReserveLegs, unit: UnitOfWork) -> LegsDone:
        return await reserve_legs(command, unit, assets)

    service.command(RESERVE, ReserveLegs, LegsDone)(reserve)
    service.command(POST, PostLegs, LegsDone)(post_legs)
    service.command(VOID, VoidLegs, LegsDone)(void_legs)


async def reserve_legs(command: ReserveLegs, unit: UnitOfWork, assets: Assets) -> LegsDone:
    """Place every leg's debit hold on the payer and pending credit on the payee, or none.

    Raises CommandRefused: `unknown_currency`, `same_account`, `duplicate_leg`, or the code
    of the domain's refusal (`insufficient_funds`, `account_frozen`, `account_closed`,
    `currency_mismatch`, `unknown_account`, ...). A hold already open on the same terms is
    a retry and is left as it is.
    """
    _check_legs(command.legs, assets)
    accounts = await _Accounts.load(unit, _accounts_of(command.legs))
    placed: list[str] = []
    for leg in command.legs:
        for side in _SIDES:
            hold = _hold_of(command.transfer_id, leg, side)
            account_id = _account_on(leg, side)
            accounts.decide(account_id, leg, partial(place_hold, hold=hold, currency=leg.currency))
            placed.append(hold.hold_id)
    await accounts.save()
    return LegsDone(transfer_id=command.transfer_id, hold_ids=tuple(placed))


async def post_legs(command: PostLegs, unit: UnitOfWork) -> LegsDone:
    """Post both holds of every leg: the payer's debit and the payee's credit, exactly.

    A hold that was posted already is a retry and is skipped. Raises CommandRefused
    `hold_voided` or `hold_not_found` for a hold that cannot be posted, `hold_conflict` when
    the open hold's amount is not the leg's, `unknown_account`.
    """
    _check_distinct(command.legs)
    accounts = await _Accounts.load(unit, _accounts_of(command.legs))
    posted: list[str] = []
    for leg in command.legs:
        for side in _SIDES:
            account_id = _account_on(leg, side)
            id_of_hold = hold_id(command.transfer_id, leg.leg_id, side)
            hold = accounts.state(account_id).open_holds.get(id_of_hold)
            if hold is None:
                end = await _hold_end(unit, account_id, id_of_hold)
                if end is not HoldEnd.POSTED:
                    raise _refused_hold(end, account_id, leg, id_of_hold)
            else:
                _check_terms(hold, leg, account_id)
                accounts.decide(account_id, leg, partial(post_hold, hold_id=id_of_hold))
            posted.append(id_of_hold)
    await accounts.save()
    return LegsDone(transfer_id=command.transfer_id, hold_ids=tuple(posted))


async def void_legs(command: VoidLegs, unit: UnitOfWork) -> LegsDone:
    """Release the open holds of every leg; those never placed or voided already are fine.

    This is the compensation of a reserve, which may have failed part way or never reached
    an account (an unknown account has nothing to release). The reply lists the holds this
    command released. Raises CommandRefused `hold_posted` when a hold was posted: past the
    pivot, money is never unposted.
    """
    _check_distinct(command.legs)
    accounts = await _Accounts.load(unit, _accounts_of(command.legs), missing_ok=True)
    voided: list[str] = []
    for leg in command.legs:
        for side in _SIDES:
            account_id = _account_on(leg, side)
            if not accounts.exists(account_id):
                continue
            id_of_hold = hold_id(command.transfer_id, leg.leg_id, side)
            if id_of_hold in accounts.state(account_id).open_holds:
                accounts.decide(account_id, leg, partial(void_hold, hold_id=id_of_hold))
                voided.append(id_of_hold)
            elif await _hold_end(unit, account_id, id_of_hold) is HoldEnd.POSTED:
                raise _refused_hold(HoldEnd.POSTED, account_id, leg, id_of_hold)
    await accounts.save()
    return LegsDone(transfer_id=command.transfer_id, hold_ids=tuple(voided))


class _Accounts:
    """The accounts of one command: locked, loaded once, evolved leg by leg, saved once."""

    def __init__(self, unit: UnitOfWork, loaded: dict[str, AccountState]) -> None:
        self._unit = unit
        self._loaded = loaded
        self._states = dict(loaded)
        self._events: dict[str, list[AccountEvent]] = {account_id: [] for account_id in loaded}

    @classmethod
    async def load(
        cls, unit: UnitOfWork, account_ids: Iterable[str], *, missing_ok: bool = False
    ) -> _Accounts:
        """Lock the accounts' balances rows (in id order) and load them; unknown_account
        refusal for one that does not exist, unless `missing_ok`."""
        loaded: dict[str, AccountState] = {}
        for account_id in sorted(set(account_ids)):
            state = await repository.load(
                unit.store, unit.connection, account_id, for_update=True
            )
            if state is not None:
                loaded[account_id] = state
            elif not missing_ok:
                raise _refusal(AccountNotFound(account_id), account_id, None)
        return cls(unit, loaded)

    def exists(self, account_id: str) -> bool:
        """Whether the account was found."""
        return account_id in self._states

    def state(self, account_id: str) -> AccountState:
        """The account as the decisions so far left it."""
        return self._states[account_id]

    def decide(
        self, account_id: str, leg: Leg, decision: Callable[[AccountState], list[AccountEvent]]
    ) -> None:
        """Apply `decision` to the account's current state; a domain refusal refuses all."""
        state = self._states[account_id]
        try:
            events = decision(state)
        except AccountError as error:
            raise _refusal(error, account_id, leg) from error
        self._events[account_id].extend(events)
        self._states[account_id] = fold(events, state) or state

    async def save(self) -> None:
        """Append each account's new events once, in account id order (the lock order)."""
        for account_id in sorted(self._events):
            events = self._events[account_id]
            await repository.save(self._unit, self._loaded[account_id], account_id, events)


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


async def _hold_end(unit: UnitOfWork, account_id: str, id_of_hold: str) -> HoldEnd:
    """How a hold that is not open ended, from the account's stream.

    Reads the stream's hold events; this runs only off the usual path (a retried post, a
    void after a failed reserve), so it is not worth an index of its own.
    """
    event_type = await unit.connection.fetchval(
        f"select event_type from {unit.store.schema}.events where stream_id = $1"
        " and event_type in ('HoldPosted', 'HoldVoided') and data->>'hold_id' = $2"
        " order by stream_version desc limit 1",
        stream_of(account_id),
        id_of_hold,
    )
    if event_type == "HoldPosted":
        return HoldEnd.POSTED
    if event_type == "HoldVoided":
        return HoldEnd.VOIDED
    return HoldEnd.NEVER_PLACED


def _refused_hold(end: HoldEnd, account_id: str, leg: Leg, id_of_hold: str) -> CommandRefused:
    code, what = {
        HoldEnd.POSTED: ("hold_posted", "was posted: money is never unposted"),
        HoldEnd.VOIDED: ("hold_voided", "was voided and cannot be posted"),
        HoldEnd.NEVER_PLACED: ("hold_not_found", "was never placed"),
    }[end]
    return CommandRefused(
        code, f"hold {id_of_hold} on account {account_id} {what}",
        {"account_id": account_id, "leg_id": leg.leg_id, "hold_id": id_of_hold},
    )


def _refusal(error: AccountError, account_id: str, leg: Leg | None) -> CommandRefused:
    """The typed refusal of a domain error, saying which account (and leg) refused."""
    details: dict[str, Any] = {"account_id": account_id}
    if leg is not None:
        details["leg_id"] = leg.leg_id
    if isinstance(error, InsufficientFunds):
        details["needed_minor"] = error.needed_minor
        details["available_minor"] = error.available_minor
    return CommandRefused(error.code, str(error), details)


def _accounts_of(legs: Sequence[Leg]) -> list[str]:
    return [account_id for leg in legs for account_id in (leg.from_account, leg.to_account)]


def _account_on(leg: Leg, side: HoldSide) -> str:
    return leg.from_account if side is HoldSide.DEBIT else leg.to_account


def _hold_of(transfer_id: str, leg: Leg, side: HoldSide) -> Hold:
    return Hold(hold_id(transfer_id, leg.leg_id, side), side, leg.amount_minor, transfer_id,
                leg.kind)
