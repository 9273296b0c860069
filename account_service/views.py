"""What the account API takes and gives: request and response models, and pure mappings
from rows and events to responses. Amounts cross the HTTP edge as decimal strings of the
account's currency (DESIGN 3); inside they are integers of minor units.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field

from account_service.domain import AccountState
from account_service.errors import AccountError, InsufficientFunds
from eventstore import RecordedEvent
from ledger.auth import Principal, metadata_for
from ledger.cursors import cursor_key, invalid_cursor
from ledger.money import AmountError, Assets
from ledger.problems import Problem
from ledger.validation import is_position

ID_PATTERN: Final = r"^[A-Za-z0-9_.:-]{1,100}$"
"""Account ids and owners, as the account's events accept them."""
_ID: Final = re.compile(ID_PATTERN)
MAX_CURSOR_CHARS: Final = 200

AccountId = Annotated[str, Field(pattern=ID_PATTERN)]
DecimalText = Annotated[str, Field(min_length=1, max_length=40, examples=["12.34"])]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OpenAccount(_Strict):
    owner: AccountId
    currency: Annotated[str, Field(min_length=1, max_length=12, examples=["USD"])]
    overdraft_limit: DecimalText | None = Field(
        default=None, description="How far below zero `available` may go; none by default."
    )


class Movement(_Strict):
    """A deposit or a withdrawal, in the account's currency."""

    amount: DecimalText
    reference: Annotated[str, Field(min_length=1, max_length=200)] | None = None


class Freeze(_Strict):
    reason: Annotated[str, Field(min_length=1, max_length=500)] | None = None


class Account(BaseModel):
    id: str
    owner: str
    currency: str
    status: str
    balance: str
    available: str
    pending_debits: str
    pending_credits: str
    overdraft_limit: str
    version: int
    opened_at: datetime


class Entry(BaseModel):
    id: str
    kind: str
    amount: str = Field(description="Signed: negative when money left the account.")
    balance_after: str
    currency: str
    transfer_id: str | None
    reference: str | None
    recorded_at: datetime
    global_position: int


class Posted(BaseModel):
    """A deposit or withdrawal that took effect, and the account right after it."""

    entry: Entry
    account: Account


class Balance(BaseModel):
    account_id: str
    currency: str
    as_of: datetime | None
    balance: str
    available: str
    pending_debits: str
    pending_credits: str
    version: int = Field(description="The account's version at that instant (0: not yet open).")


class AuditEvent(BaseModel):
    global_position: int
    stream_id: str
    stream_version: int
    event_id: str
    event_type: str
    data: dict[str, Any]
    metadata: dict[str, Any]
    recorded_at: datetime
    hash: str = Field(description="sha256 of this event chained to the previous one, hex.")
    prev_hash: str


class AccountPage(BaseModel):
    items: list[Account]
    next: str | None


class EntryPage(BaseModel):
    items: list[Entry]
    next: str | None


class EventPage(BaseModel):
    items: list[AuditEvent]
    next: str | None


def account_of(row: Any, assets: Assets) -> Account:
    """The response for a balances row."""
    currency = row["currency"]
    posted, debits = row["posted_minor"], row["pending_debits_minor"]
    return Account(
        id=row["account_id"], owner=row["owner"], currency=currency, status=row["status"],
        balance=assets.format(posted, currency),
        available=assets.format(posted - debits, currency),
        pending_debits=assets.format(debits, currency),
        pending_credits=assets.format(row["pending_credits_minor"], currency),
        overdraft_limit=assets.format(row["overdraft_limit_minor"], currency),
        version=row["version"], opened_at=row["opened_at"],
    )


def entry_of(row: Any, assets: Assets, currency: str) -> Entry:
    """The response for an entries row of an account holding `currency`."""
    return Entry(
        id=row["entry_id"], kind=row["kind"], currency=currency,
        amount=assets.format(row["amount_minor"], currency),
        balance_after=assets.format(row["balance_after_minor"], currency),
        transfer_id=row["transfer_id"], reference=row["reference"],
        recorded_at=row["recorded_at"], global_position=row["global_position"],
    )


def balance_of(
    account_id: str, currency: str, state: AccountState | None, as_of: datetime | None,
    assets: Assets,
) -> Balance:
    """The balances of `state` (None: the account was not open yet, all zero)."""
    posted = state.posted_minor if state else 0
    debits = state.pending_debits_minor if state else 0
    return Balance(
        account_id=account_id, currency=currency, as_of=as_of,
        balance=assets.format(posted, currency),
        available=assets.format(posted - debits, currency),
        pending_debits=assets.format(debits, currency),
        pending_credits=assets.format(state.pending_credits_minor if state else 0, currency),
        version=state.version if state else 0,
    )


def audit_event_of(event: RecordedEvent, reader: Principal) -> AuditEvent:
    """The event as stored, with its chain hashes in hex, and of its metadata what `reader`
    may see (`ledger.auth.metadata_for`: an owner's token, only its own requests')."""
    return AuditEvent(
        global_position=event.global_position, stream_id=event.stream_id,
        stream_version=event.stream_version, event_id=str(event.event_id),
        event_type=event.event_type, data=event.data,
        metadata=metadata_for(reader, event.metadata),
        recorded_at=event.recorded_at, hash=event.hash.hex(), prev_hash=event.prev_hash.hex(),
    )


def decode_cursor(cursor: str | None, kind: str, key_type: type[str] | type[int]) -> Any:
    """The key a cursor of `kind` holds (None without a cursor); 422 for any other text."""
    if cursor is None:
        return None
    after = cursor_key(cursor, kind)
    if type(after) is not key_type or not _is_key(after):
        raise invalid_cursor()
    return after


def _is_key(after: object) -> bool:
    """Whether a cursor's key could be one a list gave out: a position, or an account id."""
    if isinstance(after, str):
        return _ID.fullmatch(after) is not None  # no NUL, nothing PostgreSQL's text refuses
    return isinstance(after, int) and is_position(after)


_STATUS_BY_CODE: Final = {"unknown_account": 404, "currency_mismatch": 422, "invalid_amount": 422}
"""HTTP status of an account refusal by its code; any other refusal is a 409 Conflict."""


def problem_of(error: AccountError | AmountError) -> Problem:
    """The problem+json answer to a refusal of the account or an amount that is not valid."""
    if isinstance(error, AmountError):
        return Problem(422, str(error), code="invalid_amount")
    return Problem(_STATUS_BY_CODE.get(error.code, 409), str(error), code=error.code)


def insufficient_funds(error: InsufficientFunds, assets: Assets, currency: str) -> Problem:
    """The 409 answer to a debit above what the account has available, in its currency."""
    needed = assets.format(error.needed_minor, currency)
    available = assets.format(error.available_minor, currency)
    return Problem(
        409, f"insufficient funds: {needed} {currency} needed, {available} {currency} available"
        " (overdraft included)",
        code=error.code, needed=needed, available=available, currency=currency,
    )
