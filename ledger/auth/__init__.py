"""Access control: who may call which route, and on whose accounts (docs/auth.md).

    app = FastAPI(dependencies=[Depends(authorize_route)])
    install_access_control(app, settings)          # tokens, rate limit, body size

    async def route(principal: CurrentPrincipal) -> ...:
        require_acts_for(principal, account_owner, "withdraw from this account")

Tokens are JWTs (`tokens`), scopes and principals are in `scopes`, the route table in
`policy`, owner lookups across services in `owners`, what a reader may see of who did what
in `disclosure`.
"""

from ledger.auth.dependencies import CurrentPrincipal, authorize_route, principal_of
from ledger.auth.disclosure import metadata_for
from ledger.auth.install import AUTH_OFF_WARNING, gate_of, install_access_control, verifier_of
from ledger.auth.keys import KeyConfigError, has_keys, with_development_secret
from ledger.auth.owners import OwnersServer, OwnersUnavailable, ask_owners, owners_subject
from ledger.auth.policy import require_acts_for
from ledger.auth.scopes import Principal, Scope, UnknownScope, parse_scopes
from ledger.auth.tokens import TokenError, TokenSigner, TokenVerifier

__all__ = [
    "AUTH_OFF_WARNING",
    "CurrentPrincipal",
    "KeyConfigError",
    "OwnersServer",
    "OwnersUnavailable",
    "Principal",
    "Scope",
    "TokenError",
    "TokenSigner",
    "TokenVerifier",
    "UnknownScope",
    "ask_owners",
    "authorize_route",
    "gate_of",
    "has_keys",
    "install_access_control",
    "metadata_for",
    "owners_subject",
    "parse_scopes",
    "principal_of",
    "require_acts_for",
    "verifier_of",
    "with_development_secret",
]
