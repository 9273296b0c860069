"""The keys tokens are checked and signed with: a shared HS256 secret, RS256/ES256 key pairs.

A public key is given as PEM text or as the path of a PEM file. Each is pinned to the one
algorithm its type allows (RSA: RS256, P-256: ES256), so a token can never choose how it is
checked (the "alg confusion" of HS256 signed with a public key, or `none`).

In development, with no key configured, the ledger keeps a random HS256 secret in the data
directory (mode 0600), so tokens outlive a restart of `ledger up`.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, TypeAlias

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import SecretStr

from ledger.settings import Settings

Algorithm: TypeAlias = Literal["HS256", "RS256", "ES256"]
PublicKey: TypeAlias = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
PrivateKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

MIN_SECRET_BYTES: Final = 32
"""RFC 7518 3.2: an HS256 key must be at least as long as the hash (256 bits)."""
MIN_RSA_BITS: Final = 2048
DEV_SECRET_FILE: Final = "auth-secret"
_PEM_START: Final = "-----BEGIN"


class KeyConfigError(ValueError):
    """A configured key that cannot be used; the message names it and says why."""


@dataclass(frozen=True, slots=True)
class VerifyingKey:
    """One key that checks signatures, with the only algorithm it accepts."""

    kid: str | None
    algorithm: Algorithm
    key: PublicKey | bytes


def secret_key(secret: SecretStr) -> VerifyingKey:
    """The HS256 key of a shared secret; raises KeyConfigError when it is too short to be safe."""
    value = secret.get_secret_value().encode()
    if len(value) < MIN_SECRET_BYTES:
        raise KeyConfigError(f"LEDGER_AUTH_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes")
    return VerifyingKey(None, "HS256", value)


def public_key(kid: str, pem_or_path: str) -> VerifyingKey:
    """The key `kid` from PEM text or a PEM file; raises KeyConfigError naming `kid`."""
    text = pem_or_path.strip()
    if not text.startswith(_PEM_START):
        try:
            text = Path(text).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as error:
            message = f"public key {kid!r}: cannot read {pem_or_path!r}: {error}"
            raise KeyConfigError(message) from None
    try:
        loaded = serialization.load_pem_public_key(text.encode())
    except ValueError as error:
        raise KeyConfigError(f"public key {kid!r} is not a PEM public key: {error}") from None
    if not isinstance(loaded, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise KeyConfigError(f"public key {kid!r}: only RSA (RS256) and P-256 (ES256) keys")
    return VerifyingKey(kid, algorithm_of(loaded, kid), loaded)


def algorithm_of(key: PublicKey | PrivateKey, name: str) -> Algorithm:
    """RS256 for an RSA key of 2048 bits or more, ES256 for a P-256 key; KeyConfigError else."""
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise KeyConfigError(f"key {name!r}: RSA keys need {MIN_RSA_BITS} bits or more")
        return "RS256"
    if not isinstance(key.curve, ec.SECP256R1):
        raise KeyConfigError(f"key {name!r}: ES256 needs a P-256 key, not {key.curve.name}")
    return "ES256"


def private_key(path: Path) -> tuple[PrivateKey, Algorithm]:
    """A PEM private key (unencrypted) and the algorithm it signs with; KeyConfigError else."""
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        raise KeyConfigError(f"cannot read a private key from {path}: {error}") from None
    if not isinstance(loaded, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise KeyConfigError(f"{path}: only RSA (RS256) and P-256 (ES256) keys")
    return loaded, algorithm_of(loaded, str(path))


def verifying_keys(settings: Settings) -> list[VerifyingKey]:
    """Every key configured to check tokens (empty: none configured)."""
    keys = [public_key(kid, value) for kid, value in sorted(settings.auth_public_keys.items())]
    if settings.auth_jwt_secret is not None:
        keys.append(secret_key(settings.auth_jwt_secret))
    return keys


def has_keys(settings: Settings) -> bool:
    """Whether a secret or a public key is configured."""
    return settings.auth_jwt_secret is not None or bool(settings.auth_public_keys)


def with_development_secret(settings: Settings, data_dir: Path) -> Settings:
    """`settings`, given the data directory's secret when in development with no key set.

    The secret is made on first use (64 random bytes, file mode 0600) and reused after, so
    tokens survive restarts. In production, or with keys configured, `settings` as they are.
    """
    if settings.environment == "production" or has_keys(settings):
        return settings
    path = data_dir / DEV_SECRET_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        _create_private_file(path, secrets.token_urlsafe(64))
    if path.stat().st_mode & 0o077:
        raise KeyConfigError(f"{path} is readable by others: chmod 600 it (or delete it)")
    secret = path.read_text(encoding="ascii").strip()
    return settings.model_copy(update={"auth_jwt_secret": SecretStr(secret)})


def _create_private_file(path: Path, content: str) -> None:
    """Write `content` to a new file only its owner can read; a concurrent creator wins.

    Written aside and linked into place, so no reader ever sees it half written.
    """
    aside = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    descriptor = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="ascii") as file:
            file.write(content)
        os.link(aside, path)
    except FileExistsError:
        pass
    finally:
        aside.unlink()
