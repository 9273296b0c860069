"""Access tokens: JWTs checked against the configured keys, and made for `ledger token`.

Claims: `sub` (who; it becomes the actor in event metadata), `scope` (space separated),
`owner` (optional: binds the token to one owner's accounts), `exp` (required), `iat`,
`nbf`, and `iss` / `aud`, both required and checked when configured.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

import jwt

from ledger.auth.keys import (
    Algorithm,
    KeyConfigError,
    PrivateKey,
    VerifyingKey,
    secret_key,
    verifying_keys,
)
from ledger.auth.scopes import (
    KNOWN_SCOPES,
    OWNER_PATTERN,
    SUBJECT_PATTERN,
    Principal,
    Scope,
)
from ledger.settings import Settings

ALGORITHMS: Final[frozenset[str]] = frozenset({"HS256", "RS256", "ES256"})
MAX_TOKEN_CHARS: Final = 8_192
"""Longer is no token of ours; refused before any parsing."""
DEFAULT_REMEMBERED_TOKENS: Final = 10_000


class TokenError(Exception):
    """A token that does not prove who sent it: missing, malformed, forged, or expired.

    The message goes to the client (RFC 6750 `error_description`), so it says what is wrong
    with the token and nothing about the keys.
    """


@dataclass(frozen=True, slots=True)
class TokenVerifier:
    """Checks tokens against every configured key, each pinned to its algorithm."""

    keys: tuple[VerifyingKey, ...]
    issuer: str | None = None
    audience: str | None = None
    clock_skew_s: int = 30

    def __post_init__(self) -> None:
        assert sum(key.algorithm == "HS256" for key in self.keys) <= 1, "one shared secret"

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenVerifier:
        """The verifier of the configured keys; KeyConfigError when none is usable."""
        keys = verifying_keys(settings)
        if not keys:
            raise KeyConfigError(
                "no token keys are configured: set LEDGER_AUTH_PUBLIC_KEYS (production) or"
                " LEDGER_AUTH_JWT_SECRET"
            )
        return cls(tuple(keys), settings.auth_issuer, settings.auth_audience,
                   settings.auth_clock_skew_s)  # fmt: skip

    def verify(self, token: str) -> Principal:
        """The principal the token proves; raises TokenError."""
        return self.verify_until(token)[0]

    def verify_until(self, token: str) -> tuple[Principal, float]:
        """The principal the token proves, and until when (epoch seconds, the clock skew
        included) the token stays valid; raises TokenError."""
        if len(token) > MAX_TOKEN_CHARS:
            raise TokenError("the token is too long")
        try:
            claims = self._decode(token, self._keys_for(jwt.get_unverified_header(token)))
        except jwt.ExpiredSignatureError:
            raise TokenError("the token has expired") from None
        except jwt.InvalidSignatureError:
            raise TokenError("the token's signature is not valid") from None
        except jwt.InvalidTokenError as error:
            raise TokenError(f"the token is not valid: {error}") from None
        valid_until_s = float(claims["exp"]) + self.clock_skew_s
        return replace(principal_of(claims), valid_until_s=valid_until_s), valid_until_s

    def _decode(self, token: str, keys: list[VerifyingKey]) -> dict[str, Any]:
        """The token's claims under the first of `keys` whose signature matches."""
        for key in keys[:-1]:
            try:
                return self._decode_with(token, key)
            except jwt.InvalidSignatureError:
                continue  # during a rotation, a token without kid may be the other key's
        return self._decode_with(token, keys[-1])

    def _decode_with(self, token: str, key: VerifyingKey) -> dict[str, Any]:
        claims: dict[str, Any] = jwt.decode(
            token, key.key, algorithms=[key.algorithm], issuer=self.issuer,
            audience=self.audience, leeway=self.clock_skew_s,
            options={"require": self._required_claims()},
        )  # fmt: skip
        return claims

    def _keys_for(self, header: Mapping[str, Any]) -> list[VerifyingKey]:
        """The keys that may have signed a token with this header: the one its kid names,
        else every key of its algorithm (tried in turn, so a rotation needs no kid)."""
        algorithm = header.get("alg")
        # Checked to be a string first: a JSON list or object is unhashable, and a set's
        # `in` would raise TypeError (a 500) instead of refusing the token.
        if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
            raise TokenError(f"tokens signed with {str(algorithm)[:16]!r} are not accepted")
        candidates = [key for key in self.keys if key.algorithm == algorithm]
        kid = header.get("kid")
        if algorithm != "HS256" and kid is not None:
            candidates = [key for key in candidates if key.kid == kid]
        if not candidates:
            raise TokenError("the token was not signed by a key this ledger knows")
        return candidates

    def _required_claims(self) -> list[str]:
        required = ["exp", "sub"]
        if self.issuer is not None:
            required.append("iss")
        if self.audience is not None:
            required.append("aud")
        return required


class VerifiedTokens:
    """A verifier that remembers the tokens it accepted until they expire.

    A client sends the same token with every request, and checking a signature costs far
    more than a lookup (RS256 and ES256 the most). Keyed by the whole token, so only the
    very bytes that were verified hit; bounded to `max_tokens`, least recent dropped.
    Refused tokens are not remembered: each is checked again.
    """

    def __init__(
        self, verifier: TokenVerifier, *, max_tokens: int = DEFAULT_REMEMBERED_TOKENS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        assert max_tokens >= 1, "remember one token at least"
        self._verifier = verifier
        self._max_tokens = max_tokens
        self._clock = clock
        self._accepted: OrderedDict[str, tuple[Principal, float]] = OrderedDict()

    def verify(self, token: str) -> Principal:
        """The principal the token proves; raises TokenError."""
        remembered = self._accepted.pop(token, None)
        if remembered is None or self._clock() >= remembered[1]:
            remembered = self._verifier.verify_until(token)
        self._accepted[token] = remembered
        if len(self._accepted) > self._max_tokens:
            self._accepted.popitem(last=False)
        return remembered[0]


def principal_of(claims: Mapping[str, Any]) -> Principal:
    """The principal of verified claims; TokenError when `sub`, `scope` or `owner` is malformed.

    Scopes this ledger does not know are ignored (a token from an identity provider may
    carry others, such as `openid`).
    """
    subject = claims.get("sub")
    if not isinstance(subject, str) or not SUBJECT_PATTERN.match(subject):
        raise TokenError("the token's `sub` must be 1 to 128 printable characters, no spaces")
    scope = claims.get("scope", "")
    if not isinstance(scope, str):
        raise TokenError("the token's `scope` must be a space-separated string")
    owner = claims.get("owner")
    if owner is not None and (not isinstance(owner, str) or not OWNER_PATTERN.match(owner)):
        raise TokenError("the token's `owner` is not a valid owner")
    scopes = frozenset(Scope(name) for name in scope.split() if name in KNOWN_SCOPES)
    return Principal(subject, scopes, owner)


@dataclass(frozen=True, slots=True)
class TokenSigner:
    """Makes tokens: with the shared secret (HS256) or a private key (RS256 / ES256)."""

    key: PrivateKey | bytes
    algorithm: Algorithm
    kid: str | None = None
    issuer: str | None = None
    audience: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenSigner:
        """A signer with the configured HS256 secret; KeyConfigError without one."""
        if settings.auth_jwt_secret is None:
            raise KeyConfigError("no LEDGER_AUTH_JWT_SECRET to sign with (or give a private key)")
        key = secret_key(settings.auth_jwt_secret)
        assert isinstance(key.key, bytes), "a secret is bytes"
        return cls(key.key, "HS256", None, settings.auth_issuer, settings.auth_audience)

    def issue(
        self, subject: str, scopes: Iterable[Scope], *, ttl_s: int, owner: str | None = None,
        now_s: float | None = None,
    ) -> str:
        """A token for `subject` with `scopes`, valid `ttl_s` seconds from `now_s` (now)."""
        assert SUBJECT_PATTERN.match(subject), "callers check the subject"
        assert owner is None or OWNER_PATTERN.match(owner), "callers check the owner"
        assert ttl_s > 0, "a token must live"
        issued_at = int(time.time() if now_s is None else now_s)
        claims: dict[str, Any] = {
            "sub": subject, "scope": " ".join(sorted(scope.value for scope in scopes)),
            "iat": issued_at, "exp": issued_at + ttl_s, "jti": secrets.token_hex(16),
        }  # fmt: skip
        for name, value in (("owner", owner), ("iss", self.issuer), ("aud", self.audience)):
            if value is not None:
                claims[name] = value
        headers = {"kid": self.kid} if self.kid else None
        return jwt.encode(claims, self.key, algorithm=self.algorithm, headers=headers)
