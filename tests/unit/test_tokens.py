"""Tokens, keys, scopes, the route table and the rate limiter, without a server; and
`ledger token create`, whose tokens the ledger's own verifier accepts."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import time
from pathlib import Path
from typing import Any, Final

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import SecretStr
from typer.testing import CliRunner

from ledger.auth import (
    KeyConfigError,
    Principal,
    Scope,
    TokenError,
    TokenSigner,
    TokenVerifier,
    UnknownScope,
    parse_scopes,
    with_development_secret,
)
from ledger.auth.keys import DEV_SECRET_FILE, Algorithm
from ledger.auth.policy import ADMIN_ONLY, authorize, is_public, rule_for
from ledger.auth.ratelimit import RateLimiter, retry_after_header
from ledger.auth.tokens import VerifiedTokens
from ledger.cli import app as cli
from ledger.problems import Problem
from ledger.settings import Settings

SECRET: Final = secrets.token_urlsafe(32)
RSA_KEY: Final = rsa.generate_private_key(public_exponent=65_537, key_size=2048)
OTHER_RSA_KEY: Final = rsa.generate_private_key(public_exponent=65_537, key_size=2048)
EC_KEY: Final = ec.generate_private_key(ec.SECP256R1())


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def settings(**fields: Any) -> Settings:
    return Settings(**{"auth_jwt_secret": SecretStr(SECRET), **fields})


def verifier(**fields: Any) -> TokenVerifier:
    return TokenVerifier.from_settings(settings(**fields))


def key_pair_verifier(public_keys: dict[str, str]) -> TokenVerifier:
    """A verifier of public keys only (no shared secret, as in production)."""
    return TokenVerifier.from_settings(Settings(auth_jwt_secret=None, auth_public_keys=public_keys))


def hs256(claims: dict[str, Any], key: str = SECRET) -> str:
    return jwt.encode(claims, key, algorithm="HS256")


def claims(**fields: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "teller-7", "scope": "accounts:read", "iat": now, "exp": now + 86_400, **fields}


# --- tokens --------------------------------------------------------------------------------


def test_a_token_made_by_the_signer_verifies_to_its_principal() -> None:
    token = TokenSigner.from_settings(settings()).issue(
        "teller-7", [Scope.ACCOUNTS_READ, Scope.TRANSFERS_WRITE], ttl_s=60, owner="alice"
    )

    principal = verifier().verify(token)

    assert principal == Principal(
        "teller-7", frozenset({Scope.ACCOUNTS_READ, Scope.TRANSFERS_WRITE}), "alice"
    )


@pytest.mark.parametrize(("token", "reason"), [
    (hs256(claims(exp=int(time.time()) - 3600)), "expired"),
    (hs256(claims(), key=secrets.token_urlsafe(32)), "signature"),
    (jwt.encode(claims(), "", algorithm="none"), "'none'"),
    (hs256({"sub": "teller-7", "scope": "admin"}), "exp"),
    (hs256(claims(sub=None)), "sub"),
    (hs256(claims(scope=["admin"])), "scope"),
    (hs256(claims(owner="not an owner!")), "owner"),
    (hs256(claims(nbf=int(time.time()) + 3600)), "not valid"),
    ("a.b.c", "not valid"),
    ("x" * 9000, "too long"),
], ids=["expired", "wrong key", "alg none", "no exp", "no sub", "scope not a string",
        "bad owner", "not yet valid", "garbage", "too long"])  # fmt: skip
def test_a_token_that_proves_nothing_is_refused(token: str, reason: str) -> None:
    with pytest.raises(TokenError, match=reason):
        verifier().verify(token)


@pytest.mark.parametrize("alg", [["HS256"], {"HS256": True}, None, 256],
                         ids=["list", "object", "null", "number"])  # fmt: skip
def test_a_token_whose_alg_is_no_string_is_refused(alg: object) -> None:
    header = jwt.utils.base64url_encode(orjson.dumps({"alg": alg, "typ": "JWT"})).decode()
    body = jwt.utils.base64url_encode(orjson.dumps(claims(scope="admin"))).decode()
    signature = hmac.new(SECRET.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()

    with pytest.raises(TokenError, match="not accepted"):
        verifier().verify(f"{header}.{body}.{jwt.utils.base64url_encode(signature).decode()}")


def test_a_verified_principal_knows_until_when_its_token_proves_it() -> None:
    exp = int(time.time()) + 60

    principal = verifier(auth_clock_skew_s=30).verify(hs256(claims(exp=exp)))

    assert principal.valid_until_s == exp + 30
    assert principal == Principal("teller-7", frozenset({Scope.ACCOUNTS_READ}))


def test_a_tampered_payload_breaks_the_signature() -> None:
    header, _, signature = hs256(claims()).split(".")
    forged_payload = jwt.utils.base64url_encode(orjson.dumps(claims(scope="admin"))).decode()

    with pytest.raises(TokenError, match="signature"):
        verifier().verify(f"{header}.{forged_payload}.{signature}")


def test_the_clock_skew_forgives_a_token_just_expired() -> None:
    token = hs256(claims(exp=int(time.time()) - 5))

    assert verifier(auth_clock_skew_s=60).verify(token).subject == "teller-7"


def test_scopes_the_ledger_does_not_know_are_ignored_and_admin_implies_all() -> None:
    principal = verifier().verify(hs256(claims(scope="openid admin profile")))

    assert principal.scopes == {Scope.ADMIN}
    assert all(principal.has(scope) for scope in Scope)


def test_issuer_and_audience_are_required_when_configured() -> None:
    checked = verifier(auth_issuer="https://idp", auth_audience="ledger")

    assert checked.verify(hs256(claims(iss="https://idp", aud="ledger"))).subject == "teller-7"
    for wrong in (claims(iss="https://evil", aud="ledger"), claims(iss="https://idp"),
                  claims(aud="ledger"), claims(iss="https://idp", aud="other")):
        with pytest.raises(TokenError):
            checked.verify(hs256(wrong))


@pytest.mark.parametrize("key", [RSA_KEY, EC_KEY], ids=["RS256", "ES256"])
def test_a_key_pair_token_verifies_with_the_public_key_of_its_kid(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
) -> None:
    algorithm: Algorithm = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
    keys = {"new": pem(key), "old": pem(OTHER_RSA_KEY)}
    checked = key_pair_verifier(keys)

    token = TokenSigner(key, algorithm, "new").issue("svc", [Scope.AUDIT_READ], ttl_s=60)
    without_kid = TokenSigner(key, algorithm).issue("svc", [Scope.AUDIT_READ], ttl_s=60)
    under_other_kid = TokenSigner(key, algorithm, "old").issue("svc", [], ttl_s=60)

    assert checked.verify(token).scopes == {Scope.AUDIT_READ}
    with pytest.raises(TokenError):
        checked.verify(under_other_kid)
    # Without a kid, each key of the token's algorithm is tried: a rotation needs no kid.
    assert checked.verify(without_kid).scopes == {Scope.AUDIT_READ}


def test_a_token_without_kid_signed_by_no_configured_key_is_refused() -> None:
    checked = key_pair_verifier({"new": pem(OTHER_RSA_KEY), "old": pem(RSA_KEY)})
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    token = TokenSigner(stranger, "RS256").issue("svc", [Scope.AUDIT_READ], ttl_s=60)

    with pytest.raises(TokenError, match="signature"):
        checked.verify(token)


def test_an_hs256_token_keyed_with_a_public_key_is_refused() -> None:
    checked = key_pair_verifier({"k": pem(RSA_KEY)})
    header = jwt.utils.base64url_encode(orjson.dumps({"alg": "HS256", "kid": "k"})).decode()
    body = jwt.utils.base64url_encode(orjson.dumps(claims(scope="admin"))).decode()
    signature = hmac.new(pem(RSA_KEY).encode(), f"{header}.{body}".encode(),
                         hashlib.sha256).digest()  # fmt: skip

    with pytest.raises(TokenError, match="not signed by a key"):
        checked.verify(f"{header}.{body}.{jwt.utils.base64url_encode(signature).decode()}")


class CountingVerifier(TokenVerifier):
    calls = 0

    def verify_until(self, token: str) -> tuple[Principal, float]:
        CountingVerifier.calls += 1
        return super().verify_until(token)


def test_an_accepted_token_is_remembered_until_it_expires_then_checked_again() -> None:
    clock = Clock(now_s=time.time())
    checked = CountingVerifier(verifier().keys, clock_skew_s=0)
    remembered = VerifiedTokens(checked, clock=clock)
    token = hs256(claims(exp=int(clock.now_s) + 60))

    first, again = remembered.verify(token), remembered.verify(token)
    calls_while_valid = CountingVerifier.calls
    clock.now_s += 61  # the remembered expiry passed (the verifier's own clock has not)
    remembered.verify(token)

    assert first == again
    assert calls_while_valid == 1
    assert CountingVerifier.calls == 2


def test_a_refused_token_is_checked_again_each_time() -> None:
    remembered = VerifiedTokens(verifier())
    forged = hs256(claims(), key=secrets.token_urlsafe(32))

    for _ in range(2):
        with pytest.raises(TokenError, match="signature"):
            remembered.verify(forged)


# --- keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "message"), [
    ({"auth_jwt_secret": SecretStr("short")}, "32 bytes"),
    ({"auth_public_keys": {"small": pem(rsa.generate_private_key(65_537, 1024))}}, "2048"),
    ({"auth_public_keys": {"p384": pem(ec.generate_private_key(ec.SECP384R1()))}}, "P-256"),
    ({"auth_public_keys": {"junk": "-----BEGIN PUBLIC KEY-----\nnope"}}, "junk"),
    ({}, "no token keys"),
], ids=["short secret", "small RSA", "P-384", "not PEM", "none"])  # fmt: skip
def test_unusable_keys_are_refused_with_a_reason(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(KeyConfigError, match=message):
        TokenVerifier.from_settings(Settings(**{"auth_jwt_secret": None, **fields}))


def test_the_development_secret_is_made_once_private_and_kept(tmp_path: Path) -> None:
    bare = Settings(auth_jwt_secret=None)

    first = with_development_secret(bare, tmp_path)
    second = with_development_secret(bare, tmp_path)

    assert first.auth_jwt_secret is not None
    assert first.auth_jwt_secret == second.auth_jwt_secret
    assert stat.S_IMODE((tmp_path / DEV_SECRET_FILE).stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == [DEV_SECRET_FILE]


def test_no_development_secret_in_production_or_beside_configured_keys(tmp_path: Path) -> None:
    production = Settings(auth_jwt_secret=None, environment="production")

    assert with_development_secret(production, tmp_path) is production
    assert with_development_secret(settings(), tmp_path).auth_jwt_secret == SecretStr(SECRET)
    assert not (tmp_path / DEV_SECRET_FILE).exists()


# --- scopes and the route table ------------------------------------------------------------


def test_an_unknown_scope_name_is_refused() -> None:
    assert parse_scopes(["admin", "audit:read"]) == {Scope.ADMIN, Scope.AUDIT_READ}
    with pytest.raises(UnknownScope, match="acounts:read"):
        parse_scopes(["acounts:read"])


def test_a_route_missing_from_the_table_is_for_admins_only() -> None:
    assert rule_for("DELETE", "/v1/something/new") == ADMIN_ONLY
    assert rule_for("get", "/v1/accounts").any_of == {Scope.ACCOUNTS_READ}


def test_an_owner_bound_token_is_refused_where_the_route_applies_no_owner_rule() -> None:
    owner_admin = Principal("a", frozenset({Scope.ADMIN}), owner="alice")

    authorize(owner_admin, rule_for("GET", "/v1/accounts"))
    with pytest.raises(Problem, match="owner alice"):
        authorize(owner_admin, rule_for("GET", "/v1/sagas"))


def test_only_health_metrics_and_docs_are_public() -> None:
    public = ["/health/live", "/health/ready", "/metrics", "/docs", "/openapi.json"]
    private = ["/v1/accounts", "/healthz", "/metrics/x", "/openapi.json.bak", "/"]

    assert [is_public(path) for path in public] == [True] * len(public)
    assert [is_public(path) for path in private] == [False] * len(private)


# --- the rate limiter ----------------------------------------------------------------------


class Clock:
    def __init__(self, now_s: float = 1000.0) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


def test_a_bucket_allows_its_burst_then_says_how_long_to_wait() -> None:
    clock = Clock()
    limiter = RateLimiter(per_s=2.0, burst=3, clock=clock)

    spent = [limiter.take("a") for _ in range(3)]
    refused = limiter.take("a")
    other = limiter.take("b")
    clock.now_s += 0.5
    refilled = limiter.take("a")

    assert spent == [0.0, 0.0, 0.0]
    assert refused == pytest.approx(0.5)
    assert retry_after_header(refused) == "1"
    assert other == 0.0
    assert refilled == 0.0


def test_the_limiter_forgets_the_least_recent_clients_beyond_its_bound() -> None:
    limiter = RateLimiter(per_s=0.001, burst=1, max_clients=2, clock=Clock())

    limiter.take("a")
    limiter.take("b")
    limiter.take("c")  # "a" is forgotten: a full bucket again

    assert limiter.take("a") == 0.0
    assert limiter.take("c") > 0


# --- ledger token create -------------------------------------------------------------------


def run_cli(*args: str, **env: str) -> Any:
    return CliRunner().invoke(cli, ["token", "create", *args],
                              env={"LEDGER_AUTH_JWT_SECRET": SECRET, **env})  # fmt: skip


def test_token_create_prints_a_token_the_ledger_verifies() -> None:
    result = run_cli("--sub", "ops-1", "--scope", "accounts:read", "--scope", "audit:read",
                     "--owner", "alice", "--ttl", "2h")  # fmt: skip

    principal = verifier().verify(result.stdout.strip())
    expiry = jwt.decode(result.stdout.strip(), options={"verify_signature": False})
    assert result.exit_code == 0, result.output
    assert principal == Principal("ops-1", frozenset({Scope.ACCOUNTS_READ, Scope.AUDIT_READ}),
                                  "alice")  # fmt: skip
    assert expiry["exp"] - expiry["iat"] == 7200


def test_token_create_json_says_what_it_made() -> None:
    result = run_cli("--sub", "ops-1", "--scope", "admin", "--json")

    made = orjson.loads(result.stdout)
    assert result.exit_code == 0, result.output
    assert verifier().verify(made["token"]).subject == "ops-1"
    assert made["scope"] == ["admin"]
    assert made["algorithm"] == "HS256"


def test_token_create_signs_with_a_private_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "ec.pem"
    key_file.write_bytes(EC_KEY.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))  # fmt: skip

    result = run_cli("--sub", "svc", "--scope", "audit:read", "--private-key", str(key_file),
                     "--kid", "ec-2025")  # fmt: skip

    checked = key_pair_verifier({"ec-2025": pem(EC_KEY)})
    assert result.exit_code == 0, result.output
    assert checked.verify(result.stdout.strip()).subject == "svc"


@pytest.mark.parametrize(("args", "message"), [
    (["--sub", "x", "--scope", "acounts:read"], "unknown scope 'acounts:read'"),
    (["--sub", "has space", "--scope", "admin"], "--sub"),
    (["--sub", "x", "--scope", "admin", "--ttl", "soon"], "--ttl"),
    (["--sub", "x", "--scope", "admin", "--owner", "a/b"], "--owner"),
], ids=["scope", "sub", "ttl", "owner"])  # fmt: skip
def test_token_create_refuses_bad_arguments_in_one_line_with_exit_2(
    args: list[str], message: str
) -> None:
    result = run_cli(*args)

    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""
