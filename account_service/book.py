"""The book of a batch of account commands: its accounts and holds, locked and loaded once.

The account service's command endpoints (`account_service/commands.py`) decide every
command of a batch on one `Book`: each command's decisions are staged, so a refused command
leaves the accounts and holds as the earlier ones left them, and what was decided is
appended once per account. An account's state knows only its open holds; how the others
ended (posted, voided, or cancelled by a void that arrived before its reserve) is read from
the inline `holds` table after the accounts are locked and followed through the batch's
own decisions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any, Final

from account_service import repository
from account_service.contracts import (
    AccountEvent,
    HoldCancelled,
    HoldPlaced,
    HoldPosted,
    HoldSide,
    HoldVoided,
    Leg,
    PostLegs,
    ReserveLegs,
    VoidLegs,
    hold_id,
)
from account_service.domain import AccountState, EndedHolds, HoldStatus, fold
from account_service.errors import (
    AccountError,
    AccountNotFound,
    HoldConflict,
    HoldEnded,
    HoldNotOpen,
    InsufficientFunds,
)
from account_service.events import to_new_event
from eventstore import NewEvent, UnitOfWork
from ledger.commands import CommandRefused

SIDES: Final = (HoldSide.DEBIT, HoldSide.CREDIT)
"""A leg's two holds: the payer's debit, the payee's pending credit."""
Legs = ReserveLegs | PostLegs | VoidLegs
"""A command on the holds of legs."""


class Book:
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
    async def load(cls, unit: UnitOfWork, commands: Sequence[Legs]) -> Book:
        """Lock and load every account the commands name (in id order; the unknown ones
        are left out), and read how their holds stand from the holds read model.

        The holds are read after the accounts are locked: a hold's row changes only with an
        append to its account, so it agrees with the states loaded (and the append's
        version check would refuse it if not)."""
        account_ids = [a for command in commands for a in accounts_of(command.legs)]
        loaded = await repository.load_many(unit.store, unit.connection, account_ids)
        rows = await unit.connection.fetch(
            f"select hold_id, account_id, status from {unit.store.schema}.holds"
            " where hold_id = any($1::text[])",
            [hold_id(command.transfer_id, leg.leg_id, side)
             for command in commands for leg in command.legs for side in SIDES],
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
                raise refusal(AccountNotFound(account_id), account_id, None)

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
            for side in SIDES:
                id_of_hold = hold_id(transfer_id, leg.leg_id, side)
                if id_of_hold not in self._holds:
                    continue
                account_id, status = self._holds[id_of_hold]
                if account_id != account_on(leg, side):
                    raise CommandRefused(
                        HoldConflict.code,
                        f"hold {id_of_hold} is on account {account_id},"
                        f" not {account_on(leg, side)}",
                        {"account_id": account_on(leg, side), "leg_id": leg.leg_id,
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
            raise refusal(error, account_id, leg) from error
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


def refusal(error: AccountError, account_id: str, leg: Leg | None) -> CommandRefused:
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


def accounts_of(legs: Sequence[Leg]) -> list[str]:
    """Both accounts of every leg, in leg order (payer first)."""
    return [account_id for leg in legs for account_id in (leg.from_account, leg.to_account)]


def account_on(leg: Leg, side: HoldSide) -> str:
    """The account that holds `side` of the leg: the payer the debit, the payee the credit."""
    return leg.from_account if side is HoldSide.DEBIT else leg.to_account
