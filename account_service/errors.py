"""What the account refuses: one named error per rule, each with a machine-readable `code`
and a message a person can act on (STYLE 15). Raised by `account_service.domain`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from account_service.domain import HoldStatus


class AccountError(Exception):
    """A request the account refuses; `code` is machine-readable."""

    code = "refused"


class AccountNotFound(AccountError):
    code = "unknown_account"

    def __init__(self, account_id: str) -> None:
        super().__init__(f"account {account_id} does not exist")


class AccountAlreadyExists(AccountError):
    code = "account_exists"

    def __init__(self, account_id: str) -> None:
        super().__init__(f"account {account_id} already exists")


class AccountFrozenError(AccountError):
    code = "account_frozen"

    def __init__(self, account_id: str) -> None:
        super().__init__(f"account {account_id} is frozen: no new debits or credits")


class AccountClosedError(AccountError):
    code = "account_closed"

    def __init__(self, account_id: str) -> None:
        super().__init__(f"account {account_id} is closed")


class InsufficientFunds(AccountError):
    code = "insufficient_funds"

    def __init__(self, account_id: str, needed_minor: int, available_minor: int) -> None:
        # The message names no balance: it becomes the detail of a refused transfer or
        # trade, which the payee and a trade's counterparty read too (found in review).
        super().__init__(
            f"account {account_id} has less available (overdraft included) than the"
            f" {needed_minor} minor units needed"
        )
        self.needed_minor = needed_minor
        self.available_minor = available_minor


class CurrencyMismatch(AccountError):
    code = "currency_mismatch"

    def __init__(self, account_id: str, account_currency: str, currency: str) -> None:
        super().__init__(f"account {account_id} holds {account_currency}, not {currency}")


class CannotClose(AccountError):
    code = "cannot_close"


class HoldNotOpen(AccountError):
    """The hold cannot be posted or voided: it was never placed, or it ended otherwise."""

    code = "hold_not_open"
    what = "is not open"

    def __init__(self, account_id: str, hold_id: str) -> None:
        super().__init__(f"hold {hold_id} on account {account_id} {self.what}")
        self.hold_id = hold_id


class HoldNotFound(HoldNotOpen):
    code = "hold_not_found"
    what = "was never placed"


class HoldAlreadyVoided(HoldNotOpen):
    code = "hold_voided"
    what = "was voided (or cancelled before it was placed) and cannot be posted"


class HoldAlreadyPosted(HoldNotOpen):
    code = "hold_posted"
    what = "was posted: money is never unposted"


class HoldEnded(AccountError):
    """A hold id that was posted, voided or cancelled is never placed again (DESIGN 3)."""

    code = "hold_ended"

    def __init__(self, account_id: str, hold_id: str, status: HoldStatus) -> None:
        super().__init__(
            f"hold {hold_id} on account {account_id} has ended ({status.value}):"
            " a hold is placed once and ends once"
        )
        self.hold_id = hold_id
        self.status = status


class TooManyHolds(AccountError):
    code = "too_many_holds"


class HoldConflict(AccountError):
    """A hold id already open with another side, amount, transfer or kind: a caller's bug."""

    code = "hold_conflict"

    def __init__(self, account_id: str, hold_id: str) -> None:
        super().__init__(
            f"account {account_id} already has an open hold {hold_id} with other terms"
        )
        self.hold_id = hold_id


class InvalidAmount(AccountError):
    code = "invalid_amount"


class BalanceLimitExceeded(AccountError):
    code = "balance_limit"

    def __init__(self, account_id: str, largest_minor: int) -> None:
        super().__init__(
            f"account {account_id} would exceed the largest balance of {largest_minor}"
            " minor units"
        )
