"""An account's history replayed from its events with the domain's own fold: every event
with its effect on the money and the balance right after it, and the state at an instant.

The instant follows the balance endpoint's rule (`GET /v1/accounts/{id}/balance?as_of=`):
the state of the longest prefix of the stream recorded at or before it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from pydantic import ValidationError

from account_service.contracts import (
    AccountEvent,
    AccountOpened,
    Deposited,
    HoldPlaced,
    HoldPosted,
    HoldSide,
    HoldVoided,
    Withdrawn,
)
from account_service.domain import AccountState, evolve
from account_service.errors import AccountNotFound
from account_service.events import from_recorded, stream_of
from eventstore import EventStore, RecordedEvent, StreamNotFound

PAGE_EVENTS: Final = 1_000


class UnreplayableStream(Exception):
    """An account's stream holds an event the domain cannot decode or fold (changed behind
    the store's back, or written by a version that knew an event this one does not)."""

    def __init__(self, account_id: str, place: str, reason: str) -> None:
        super().__init__(f"account {account_id}: {place} does not replay: {reason}")
        self.account_id = account_id


@dataclass(frozen=True, slots=True)
class HistoryLine:
    """One event of an account and where it left the account."""

    recorded_at: datetime
    stream_version: int
    event_id: str
    event_type: str
    amount_minor: int | None
    """Signed: what left the account is negative. None for events that move nothing."""
    effect: str | None
    """`posted` (the balance moved), `held` (reserved), `released` (a hold voided)."""
    balance_minor: int
    """The posted balance right after the event."""
    available_minor: int
    transfer_id: str | None
    correlation_id: str | None
    actor: str | None


@dataclass(frozen=True, slots=True)
class AccountHistory:
    """The lines up to the instant (all of them without one), and the state there."""

    account_id: str
    currency: str
    lines: list[HistoryLine]
    state: AccountState | None
    """The account at the instant; None when it was not open yet."""
    as_of: datetime | None


async def replay_account(
    store: EventStore, account_id: str, as_of: datetime | None = None
) -> AccountHistory:
    """Replay the account's stream up to `as_of` (aware) or to its end.

    Raises AccountNotFound when the account has no events, UnreplayableStream when one of
    them does not decode or fold (`ledger audit verify` says more).
    """
    lines: list[HistoryLine] = []
    state: AccountState | None = None
    currency: str | None = None
    async for event in _events(store, account_id):
        try:
            typed = from_recorded(event)
        except (KeyError, ValidationError) as error:
            place = f"event {event.stream_version}"
            raise UnreplayableStream(account_id, place, repr(error)) from error
        if isinstance(typed, AccountOpened):
            currency = typed.currency
        elif currency is None:
            place = f"event {event.stream_version}"
            raise UnreplayableStream(account_id, place, "the account was not opened first")
        if as_of is not None and event.recorded_at > as_of:
            break
        try:
            state = evolve(state, typed)
        except AssertionError as error:  # the fold's own rules: a hold ends once, ...
            place = f"event {event.stream_version}"
            raise UnreplayableStream(account_id, place, str(error)) from error
        lines.append(_line(event, typed, state))
    assert currency is not None, "a stream has an event, the loop checked the first"
    return AccountHistory(account_id, currency, lines, state, as_of)


async def _events(store: EventStore, account_id: str) -> AsyncIterator[RecordedEvent]:
    next_version = 1
    while True:
        try:
            page = await store.read_stream(stream_of(account_id), from_version=next_version,
                                           limit=PAGE_EVENTS)  # fmt: skip
        except StreamNotFound:
            raise AccountNotFound(account_id) from None
        except ValueError as error:  # stored JSON no reader takes: changed behind our back
            place = f"an event from version {next_version} on"  # read a page at a time
            raise UnreplayableStream(account_id, place, f"its JSON: {error}") from error
        for event in page:
            yield event
        if len(page) < PAGE_EVENTS:
            return
        next_version = page[-1].stream_version + 1


def _line(event: RecordedEvent, typed: AccountEvent, state: AccountState) -> HistoryLine:
    amount_minor, effect = money_effect(typed)
    metadata = event.metadata
    return HistoryLine(
        recorded_at=event.recorded_at, stream_version=event.stream_version,
        event_id=str(event.event_id), event_type=event.event_type, amount_minor=amount_minor,
        effect=effect, balance_minor=state.posted_minor, available_minor=state.available_minor,
        transfer_id=getattr(typed, "transfer_id", None),
        correlation_id=_text(metadata.get("correlation_id")), actor=_text(metadata.get("actor")),
    )  # fmt: skip


def money_effect(event: AccountEvent) -> tuple[int | None, str | None]:
    """The signed amount an event moves or holds on its account, and how."""
    match event:
        case Deposited():
            return event.amount_minor, "posted"
        case Withdrawn():
            return -event.amount_minor, "posted"
        case HoldPosted():
            return _signed(event.side, event.amount_minor), "posted"
        case HoldPlaced():
            return _signed(event.side, event.amount_minor), "held"
        case HoldVoided():
            return _signed(event.side, event.amount_minor), "released"
    return None, None


def _signed(side: HoldSide, amount_minor: int) -> int:
    return amount_minor if side is HoldSide.CREDIT else -amount_minor


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
