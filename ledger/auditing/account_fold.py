"""One account's stream folded event by event with the account domain's own `evolve`,
watching what the fold alone cannot see: that a hold id starts once and ends once, and the
money rules the domain's decisions keep (DESIGN 3): available never below the overdraft
limit, no new debit or credit on a frozen account, nothing after a close, and a close only
at a zero balance with no open hold. `evolve` applies what it is given; an event written
behind the domain's back could break any of them and still fold.

Pure: no I/O. The database pass (`accounts.py`) feeds it events and compares what it folds
to with the read models.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import ValidationError

from account_service.contracts import (
    AccountClosed,
    AccountEvent,
    Deposited,
    HoldCancelled,
    HoldPlaced,
    HoldPosted,
    HoldSide,
    HoldVoided,
    Withdrawn,
)
from account_service.domain import AccountState, Status, evolve
from account_service.events import account_id_of, from_recorded
from eventstore import RecordedEvent
from ledger.auditing.findings import Finding

SERVICE = "account"


@dataclass(frozen=True, slots=True)
class OpenHold:
    """A hold still open at the end of its account's stream, and where it was placed."""

    account_id: str
    hold_id: str
    transfer_id: str
    stream_version: int

    @property
    def stream_id(self) -> str:
        """The account's stream."""
        return f"{SERVICE}-{self.account_id}"


@dataclass(slots=True)
class AccountFolder:
    """Folds one account stream; stops at the first event it cannot accept (`finding`)."""

    stream_id: str
    state: AccountState | None = None
    finding: Finding | None = None
    events: int = 0
    last_version: int = 0
    movements: int = 0
    """Deposits, withdrawals and posted holds: the events that make an entry."""
    movement_positions: int = 0
    """The sum of their global positions: a checksum of which events made entries."""
    deposits_minor: int = 0
    withdrawals_minor: int = 0
    transfers_net_minor: int = 0
    """Posted holds, credits minus debits: zero summed over a currency's accounts."""
    _placed_at: dict[str, int] = field(default_factory=dict)
    _ended: dict[str, str] = field(default_factory=dict)

    @property
    def account_id(self) -> str:
        """The account this stream belongs to."""
        return account_id_of(self.stream_id)

    @property
    def is_sound(self) -> bool:
        """True when every event so far folded."""
        return self.finding is None

    def add(self, event: RecordedEvent) -> None:
        """Fold the stream's next event (they come in version order)."""
        assert event.stream_id == self.stream_id, "one folder per stream"
        self.events += 1
        self.last_version = event.stream_version
        if self.finding is not None:
            return
        try:
            typed = from_recorded(event)
        except (KeyError, ValidationError) as error:
            self._refuse(event, "events", f"the event does not decode: {_first_line(error)}")
            return
        problem = self._hold_problem(typed)
        if problem is not None:
            self._refuse(event, "holds", problem)
            return
        problem = _rule_before(self.state, typed)
        if problem is not None:
            self._refuse(event, "rules", problem)
            return
        try:
            self.state = evolve(self.state, typed)
        except AssertionError as error:
            self._refuse(event, "fold", f"the account's fold refuses it: {error}")
            return
        if self.state.available_minor < -self.state.overdraft_limit_minor:
            self._refuse(event, "rules", f"available {self.state.available_minor} is below the"
                         f" overdraft limit of {self.state.overdraft_limit_minor}")  # fmt: skip
            return
        self._track(event, typed)

    def add_undecodable(self, stream_version: int, error: str) -> None:
        """Count the stream's next event, whose stored JSON does not decode: the stream
        folds no further."""
        self.events += 1
        self.last_version = stream_version
        if self.finding is None:
            self.finding = Finding(SERVICE, self.stream_id, stream_version, "events",
                                   f"the stored event does not decode: {error}")  # fmt: skip

    def open_holds(self) -> list[OpenHold]:
        """The holds open at the end of the stream, with the version that placed each."""
        if self.state is None or self.finding is not None:
            return []
        return [
            OpenHold(self.account_id, hold.hold_id, hold.transfer_id, self._placed_at[hold_id])
            for hold_id, hold in self.state.open_holds.items()
        ]

    def _refuse(self, event: RecordedEvent, check: str, reason: str) -> None:
        self.finding = Finding(SERVICE, self.stream_id, event.stream_version, check, reason)

    def _hold_problem(self, event: AccountEvent) -> str | None:
        """Why a hold event breaks "a hold starts once and ends once", if it does."""
        if not isinstance(event, HoldPlaced | HoldPosted | HoldVoided | HoldCancelled):
            return None
        hold_id = event.hold_id
        ended = self._ended.get(hold_id)
        is_open = hold_id in self._placed_at
        if isinstance(event, HoldPlaced):
            if is_open:
                return f"hold {hold_id} is placed again while it is open"
            if ended is not None:
                return f"hold {hold_id} is placed again after it was {ended}"
        elif isinstance(event, HoldCancelled):
            if is_open:
                return f"hold {hold_id} was placed: it must be voided, not cancelled"
            if ended is not None:
                return f"hold {hold_id} is cancelled after it was {ended}"
        elif ended is not None:
            return f"hold {hold_id} ends a second time (it was {ended})"
        elif not is_open:
            return f"hold {hold_id} ends but was never placed"
        return None

    def _track(self, event: RecordedEvent, typed: AccountEvent) -> None:
        match typed:
            case HoldPlaced():
                self._placed_at[typed.hold_id] = event.stream_version
            case HoldPosted() | HoldVoided():
                del self._placed_at[typed.hold_id]
                self._ended[typed.hold_id] = "posted" if isinstance(typed, HoldPosted) else "voided"
            case HoldCancelled():
                self._ended[typed.hold_id] = "cancelled"
        if isinstance(typed, Deposited | Withdrawn | HoldPosted):
            self.movements += 1
            self.movement_positions += event.global_position
        if isinstance(typed, Deposited):
            self.deposits_minor += typed.amount_minor
        elif isinstance(typed, Withdrawn):
            self.withdrawals_minor += typed.amount_minor
        elif isinstance(typed, HoldPosted):
            sign = 1 if typed.side is HoldSide.CREDIT else -1
            self.transfers_net_minor += sign * typed.amount_minor


def _rule_before(state: AccountState | None, event: AccountEvent) -> str | None:
    """Why `event` may not follow `state` by the money rules, if it may not."""
    if state is None:
        return None
    if state.status is Status.CLOSED:
        return f"{type(event).__name__} after the account was closed"
    if state.status is Status.FROZEN and isinstance(event, Deposited | Withdrawn | HoldPlaced):
        return f"{type(event).__name__} on a frozen account"
    if isinstance(event, AccountClosed) and (state.posted_minor or state.open_holds):
        return (f"closed with a balance of {state.posted_minor} and"
                f" {len(state.open_holds)} open hold(s)")  # fmt: skip
    return None


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return " ".join(line.strip() for line in text[:2]) if text else type(error).__name__
