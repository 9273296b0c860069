"""Who may call what: the one table of the HTTP routes' scopes.

Each protected route names the scopes of which a token needs one. A route missing from the
table needs `admin`, so a route added without a thought is closed, not open (a test checks
that every route of the ledger is in the table). `owner_rule` marks the routes that apply
the owner rule themselves (they read the token's owner and check the accounts involved);
a token bound to an owner is refused on every other route, since nothing there would keep
it to its owner's accounts.

Health, metrics and the API docs are public: probes and scrapers carry no tokens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from starlette.routing import compile_path

from ledger.auth.scopes import Principal, Scope
from ledger.problems import Problem

PUBLIC_PATHS: Final = frozenset({"/metrics", "/openapi.json", "/docs", "/redoc"})
PUBLIC_PREFIXES: Final = ("/health/", "/docs/")


@dataclass(frozen=True, slots=True)
class Rule:
    """A token needs one of `any_of`; `owner_rule`: the route keeps owner tokens to their
    owner's accounts."""

    any_of: frozenset[Scope]
    owner_rule: bool = False


def _rule(*scopes: Scope, owner_rule: bool = False) -> Rule:
    return Rule(frozenset(scopes), owner_rule)


_READ = _rule(Scope.ACCOUNTS_READ, owner_rule=True)
_WRITE = _rule(Scope.ACCOUNTS_WRITE, owner_rule=True)
_BACK_OFFICE = _rule(Scope.ACCOUNTS_ADMIN)
"""Money in and out of the ledger, and the bank's freezes: never an owner's own doing, so a
token bound to an owner is refused (docs/auth.md)."""
_MOVE = _rule(Scope.TRANSFERS_WRITE, owner_rule=True)
_FOLLOW = _rule(Scope.ACCOUNTS_READ, Scope.TRANSFERS_WRITE, Scope.AUDIT_READ, owner_rule=True)
_RISK_READ = _rule(Scope.RISK_ADMIN, Scope.AUDIT_READ)
_RISK_WRITE = _rule(Scope.RISK_ADMIN)
_AUDIT = _rule(Scope.AUDIT_READ)
ADMIN_ONLY: Final = _rule(Scope.ADMIN)

ROUTES: Final[dict[tuple[str, str], Rule]] = {
    ("POST", "/v1/accounts"): _WRITE,
    ("GET", "/v1/accounts"): _READ,
    ("GET", "/v1/accounts/{account_id}"): _READ,
    ("GET", "/v1/accounts/{account_id}/balance"): _READ,
    ("GET", "/v1/accounts/{account_id}/entries"): _READ,
    ("GET", "/v1/accounts/{account_id}/events"): _READ,
    ("POST", "/v1/accounts/{account_id}/deposits"): _BACK_OFFICE,
    ("POST", "/v1/accounts/{account_id}/withdrawals"): _BACK_OFFICE,
    ("POST", "/v1/accounts/{account_id}/freeze"): _BACK_OFFICE,
    ("POST", "/v1/accounts/{account_id}/unfreeze"): _BACK_OFFICE,
    ("POST", "/v1/accounts/{account_id}/close"): _WRITE,
    ("POST", "/v1/transfers"): _MOVE,
    ("POST", "/v1/trades"): _MOVE,
    ("GET", "/v1/transfers"): _FOLLOW,
    ("GET", "/v1/transfers/{transfer_id}"): _FOLLOW,
    ("GET", "/v1/trades"): _FOLLOW,
    ("GET", "/v1/trades/{trade_id}"): _FOLLOW,
    ("GET", "/v1/risk/accounts/{account_id}"): _RISK_READ,
    ("PUT", "/v1/risk/accounts/{account_id}/limits"): _RISK_WRITE,
    ("POST", "/v1/risk/accounts/{account_id}/block"): _RISK_WRITE,
    ("POST", "/v1/risk/accounts/{account_id}/unblock"): _RISK_WRITE,
    ("GET", "/v1/risk/decisions"): _RISK_READ,
    ("GET", "/v1/sagas"): _AUDIT,
    ("GET", "/v1/sagas/{saga_id}"): _AUDIT,
    ("POST", "/v1/sagas/{saga_id}/retry"): ADMIN_ONLY,
    ("GET", "/v1/streams/{stream_id}/events"): _AUDIT,
}
"""(method, path template) -> rule. Absent: `admin` only."""


_TEMPLATES: Final[tuple[tuple[re.Pattern[str], str], ...]] = tuple(
    (compile_path(template)[0], template) for template in sorted({path for _, path in ROUTES})
)


def template_of(path: str) -> str | None:
    """The path template of the table's route that `path` is for, or None. For the requests
    the access gate answers before any route has matched them (401, 413, 429)."""
    return next((template for pattern, template in _TEMPLATES if pattern.match(path)), None)


def is_public(path: str) -> bool:
    """Whether `path` is served without a token (health, metrics, API docs)."""
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def rule_for(method: str, path_template: str) -> Rule:
    """The rule of a route; `admin` only for a route the table does not list."""
    return ROUTES.get((method.upper(), path_template), ADMIN_ONLY)


class ScopeRefused(Problem):
    """403: the token has none of the scopes a route needs (answered with an RFC 6750
    `insufficient_scope` challenge)."""

    def __init__(self, needed: frozenset[Scope]) -> None:
        self.needed = sorted(scope.value for scope in needed)
        super().__init__(403, f"the token lacks the scope this needs: {' or '.join(self.needed)}",
                         code="insufficient_scope", required_scopes=self.needed)


def authorize(principal: Principal, rule: Rule) -> None:
    """Raise a 403 problem unless `principal` may call a route under `rule`."""
    if not principal.has_any(rule.any_of):
        raise ScopeRefused(rule.any_of)
    if principal.owner is not None and not rule.owner_rule:
        raise Problem(403, f"the token acts for owner {principal.owner} only, and this route"
                      " is not limited to one owner's accounts", code="owner_token_refused")


def require_acts_for(principal: Principal, owner: str, what: str) -> None:
    """Raise a 403 problem when an owner-bound token acts on `owner`'s money (`what`: the
    refused act, for the message)."""
    if not principal.may_act_for(owner):
        raise Problem(403, f"the token acts for owner {principal.owner}: it may not {what}",
                      code="not_owner")
