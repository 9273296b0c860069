"""Who a request acts as: the token's subject, its scopes, and the owner it is bound to."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final


class Scope(StrEnum):
    """What a token may do. `admin` implies every other scope."""

    ACCOUNTS_READ = "accounts:read"
    ACCOUNTS_WRITE = "accounts:write"
    ACCOUNTS_ADMIN = "accounts:admin"
    TRANSFERS_WRITE = "transfers:write"
    RISK_ADMIN = "risk:admin"
    AUDIT_READ = "audit:read"
    ADMIN = "admin"


KNOWN_SCOPES: Final = frozenset(scope.value for scope in Scope)
OWNER_PATTERN: Final = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
"""An owner as accounts carry it (account_service.contracts.Identifier)."""
SUBJECT_PATTERN: Final = re.compile(r"^[\x21-\x7e]{1,128}$")
"""Printable ASCII without spaces: the subject travels in headers and event metadata."""


class UnknownScope(ValueError):
    """A scope that is not one of `Scope` (a typo would otherwise grant nothing, silently)."""

    def __init__(self, scope: str) -> None:
        known = ", ".join(sorted(KNOWN_SCOPES))
        super().__init__(f"unknown scope {scope!r} (known: {known})")


def parse_scopes(names: Iterable[str]) -> frozenset[Scope]:
    """The scopes named; raises UnknownScope for a name that is none."""
    scopes: set[Scope] = set()
    for name in names:
        if name not in KNOWN_SCOPES:
            raise UnknownScope(name)
        scopes.add(Scope(name))
    return frozenset(scopes)


@dataclass(frozen=True, slots=True)
class Principal:
    """The verified identity of a request.

    `owner`, when set, binds the token to one owner's accounts: it reads only those and
    moves money only out of those, whatever its scopes (docs/auth.md). `valid_until_s`
    (epoch seconds, the clock skew included; None: for ever) is when its token stops
    proving it, so that what outlives one request (an event stream) ends then too. It is
    not part of who the principal is, so principals compare without it.
    """

    subject: str
    scopes: frozenset[Scope]
    owner: str | None = None
    valid_until_s: float | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        assert SUBJECT_PATTERN.match(self.subject), "subjects are checked when tokens are read"
        assert self.owner is None or OWNER_PATTERN.match(self.owner), "owners are checked too"

    def has(self, scope: Scope) -> bool:
        """Whether the token grants `scope` (`admin` grants all)."""
        return scope in self.scopes or Scope.ADMIN in self.scopes

    def has_any(self, scopes: Iterable[Scope]) -> bool:
        """Whether the token grants at least one of `scopes`."""
        return any(self.has(scope) for scope in scopes)

    def may_act_for(self, owner: str) -> bool:
        """Whether the token may read or move the money of `owner`'s accounts."""
        return self.owner is None or self.owner == owner


ANONYMOUS: Final = Principal("anonymous", frozenset({Scope.ADMIN}))
"""Every request's principal while `LEDGER_AUTH=off`: no checks, no actor recorded."""
