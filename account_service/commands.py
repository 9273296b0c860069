"""The account service's saga commands over NATS: reserve, post and void the holds of legs.

    register_commands(service, assets)   # subjects account.reserve, account.post, account.void

Each handler runs in the command helper's unit of work (one transaction, the reply recorded
with the effect, a repeated `command_id` answered from the record). A handler locks the
accounts it touches in account id order, so that concurrent commands over the same accounts
queue instead of failing on a version conflict, and never deadlock. An account appearing in
several legs is loaded once, each leg is decided against the state the earlier legs left,
and its events are appended once. A domain refusal becomes a `CommandRefused` with the
error's `code`, which rolls the whole command back: all legs or none.

An account's state knows only its open holds; how the others ended (posted, voided, or
cancelled by a void that arrived before its reserve) is read from the inline `holds` table
after the accounts are locked, and handed to the domain's decisions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import partial
from types import MappingProxyType
from typing import Any, Final

from account_service import repository
from account_service.contracts import (
    AccountEvent,
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
from eventstore import UnitOfWork
from ledger.commands import CommandRefused, CommandService
from ledger.money import AmountError, Assets

RESERVE: Final = "reserve"
POST: Final = "post"
VOID: Final = "void"
_SIDES: Final = (HoldSide.DEBIT, HoldSide.CREDIT)


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
    `currency_mismatch`, `unknown_account`, `hold_ended` for a hold that was posted, voided
    or cancelled, `hold_conflict`, ...). A hold already open on the same terms is a retry
    and is left as it is.
    """
    _check_legs(command.legs, assets)
    accounts = await _Accounts.load(unit, _accounts_of(command.legs))
    ended = await _ended_holds(unit, command.transfer_id, command.legs)
    placed: list[str] = []
    for leg in command.legs:
        for side in _SIDES:
            hold = _hold_of(command.transfer_id, leg, side)
            account_id = _account_on(leg, side)
            accounts.decide(account_id, leg, partial(place_hold, hold=hold, currency=leg.currency,
                                                     ended=ended))
            placed.append(hold.hold_id)
    await accounts.save()
    return LegsDone(transfer_id=command.transfer_id, hold_ids=tuple(placed))


async def post_legs(command: PostLegs, unit: UnitOfWork) -> LegsDone:
    """Post both holds of every leg: the payer's debit and the payee's credit, exactly.

    A hold that was posted already is a retry and is skipped. Raises CommandRefused
    `hold_voided` for a hold voided (or cancelled by a void that came first), `hold_not_found`
    for one never placed, `hold_conflict` when the open hold's amount is not the leg's or
    its id is on another account, `unknown_account`.
    """
    _check_distinct(command.legs)
    accounts = await _Accounts.load(unit, _accounts_of(command.legs))
    ended = await _ended_holds(unit, command.transfer_id, command.legs)
    posted: list[str] = []
    for leg in command.legs:
        for side in _SIDES:
            account_id = _account_on(leg, side)
            id_of_hold = hold_id(command.transfer_id, leg.leg_id, side)
            hold = accounts.state(account_id).open_holds.get(id_of_hold)
            if hold is not None:
                _check_terms(hold, leg, account_id)
            accounts.decide(account_id, leg, partial(post_hold, hold_id=id_of_hold, ended=ended))
            posted.append(id_of_hold)
    await accounts.save()
    return LegsDone(transfer_id=command.transfer_id, hold_ids=tuple(posted))


async def void_legs(command: VoidLegs, unit: UnitOfWork) -> LegsDone:
    """Release the open holds of every leg; cancel those never placed, so that a reserve
    arriving late (after its saga gave up on it) is refused instead of holding money forever.

    This is the compensation of a reserve, which may have failed part way, not arrived yet,
    or never reached an account (an unknown account has nothing to release or cancel). A
    hold voided or cancelled already is fine. The reply lists the holds this command
    released. Raises CommandRefused `hold_posted` when a hold was posted: past the pivot,
    money is never unposted; `hold_conflict` for a hold id on another account than the leg's.
    """
    _check_distinct(command.legs)
    accounts = await _Accounts.load(unit, _accounts_of(command.legs), missing_ok=True)
    ended = await _ended_holds(unit, command.transfer_id, command.legs)
    voided: list[str] = []
    for leg in command.legs:
        for side in _SIDES:
            account_id = _account_on(leg, side)
            if not accounts.exists(account_id):
                continue
            id_of_hold = hold_id(command.transfer_id, leg.leg_id, side)
            decision = partial(void_hold, hold_id=id_of_hold, side=side,
                               transfer_id=command.transfer_id, ended=ended)
            if any(isinstance(e, HoldVoided) for e in accounts.decide(account_id, leg, decision)):
                voided.append(id_of_hold)
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
        ids = sorted(set(account_ids))
        # Every stream first, then the rows: no transaction id is taken before the last lock.
        await repository.lock_streams(unit.store, unit.connection, ids)
        for account_id in ids:
            state = await repository.load(
                unit.store, unit.connection, account_id, for_update=True, is_stream_locked=True
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
    ) -> list[AccountEvent]:
        """Apply `decision` to the account's current state and return its events; a domain
        refusal refuses all."""
        state = self._states[account_id]
        try:
            events = decision(state)
        except AccountError as error:
            raise _refusal(error, account_id, leg) from error
        self._events[account_id].extend(events)
        self._states[account_id] = fold(events, state) or state
        return events

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


async def _ended_holds(unit: UnitOfWork, transfer_id: str, legs: Sequence[Leg]) -> EndedHolds:
    """How the legs' holds that are no longer open ended, from the holds read model.

    Read after the legs' accounts are locked: a hold's row changes only with an append to
    its account, so it agrees with the states loaded (and the append's version check would
    refuse it if not). Raises CommandRefused `hold_conflict` for a hold id that lives on
    another account than the one its leg names (a caller's bug: a hold id is one leg's).
    """
    expected = {
        hold_id(transfer_id, leg.leg_id, side): (leg, _account_on(leg, side))
        for leg in legs for side in _SIDES
    }
    rows = await unit.connection.fetch(
        f"select hold_id, account_id, status from {unit.store.schema}.holds"
        " where hold_id = any($1::text[])",
        list(expected),
    )
    ended: dict[str, HoldStatus] = {}
    for row in rows:
        leg, account_id = expected[row["hold_id"]]
        if row["account_id"] != account_id:
            raise CommandRefused(
                HoldConflict.code,
                f"hold {row['hold_id']} is on account {row['account_id']}, not {account_id}",
                {"account_id": account_id, "leg_id": leg.leg_id, "hold_id": row["hold_id"]},
            )
        status = HoldStatus(row["status"])
        if status is not HoldStatus.OPEN:
            ended[row["hold_id"]] = status
    return MappingProxyType(ended)


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
