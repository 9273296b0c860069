"""`ledger token create`: make an access token for the ledger's HTTP API (docs/auth.md).

Signed with the configured HS256 secret (`LEDGER_AUTH_JWT_SECRET`; in development without
one, the secret `ledger up` keeps in the data directory), or with a private key file for
RS256 / ES256 (`--private-key`, with the `--kid` its public key is configured under). The
token alone goes to stdout, so `TOKEN=$(ledger token create ...)` works. Exit codes: 0
made, 1 no key to sign with, 2 bad arguments.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Final, NoReturn

import orjson
import typer
from rich.console import Console
from rich.markup import escape

from ledger.auth import KeyConfigError, Scope, TokenSigner, UnknownScope, parse_scopes
from ledger.auth.keys import private_key, with_development_secret
from ledger.auth.scopes import OWNER_PATTERN, SUBJECT_PATTERN
from ledger.cli.failures import settings_or_exit
from ledger.cli.run import DataDirOption
from ledger.settings import Settings

app = typer.Typer(no_args_is_help=True)
console = Console(stderr=True)
_TTL: Final = re.compile(r"^([1-9][0-9]{0,8})([smhd]?)$")
_UNIT_S: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}
MAX_TTL_S: Final = 366 * 86_400
_KID: Final = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


@app.command("create")
def create(
    sub: Annotated[str, typer.Option("--sub", help="Who the token speaks for; recorded as the"
                                     " actor of everything it does.", show_default=False)],
    scope: Annotated[list[str], typer.Option(
        "--scope", help=f"A scope (repeat for several): {', '.join(s.value for s in Scope)}.",
        show_default=False)],
    owner: Annotated[str | None, typer.Option(
        "--owner", help="Bind the token to this owner's accounts.")] = None,
    ttl: Annotated[str | None, typer.Option(
        "--ttl", help="Lifetime: 3600, 90s, 30m, 12h, 7d (default: LEDGER_AUTH_TOKEN_TTL_S).",
        show_default=False)] = None,
    private_key_file: Annotated[Path | None, typer.Option(
        "--private-key", help="Sign RS256/ES256 with this PEM private key instead of the"
        " HS256 secret.")] = None,
    kid: Annotated[str | None, typer.Option(
        "--kid", help="Key id put in the token's header (the key's name in"
        " LEDGER_AUTH_PUBLIC_KEYS).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    data_dir: DataDirOption = None,
) -> None:
    """Print a signed access token."""
    scopes = _scopes(scope)
    _check(SUBJECT_PATTERN.match(sub) is not None,
           "--sub must be 1 to 128 printable characters without spaces")
    _check(owner is None or OWNER_PATTERN.match(owner) is not None,
           "--owner must be 1 to 100 letters, digits, _ . : -")
    _check(kid is None or _KID.match(kid) is not None, "--kid must be 1 to 64 letters, digits,"
           " _ . : -")  # fmt: skip
    settings = settings_or_exit()
    ttl_s = _ttl_s(ttl) if ttl is not None else settings.auth_token_ttl_s
    signer = _signer(settings, private_key_file, kid, data_dir or settings.data_dir)
    issued_at = datetime.now(UTC)
    token = signer.issue(sub, scopes, ttl_s=ttl_s, owner=owner,
                         now_s=issued_at.timestamp())  # fmt: skip
    if not as_json:
        typer.echo(token)
        return
    expires_at = datetime.fromtimestamp(int(issued_at.timestamp()) + ttl_s, UTC)
    typer.echo(orjson.dumps({
        "token": token, "sub": sub, "scope": sorted(s.value for s in scopes), "owner": owner,
        "algorithm": signer.algorithm, "kid": signer.kid, "expires_at": expires_at.isoformat(),
    }).decode())  # fmt: skip


def _scopes(names: list[str]) -> frozenset[Scope]:
    try:
        return parse_scopes(part for name in names for part in name.split())
    except UnknownScope as error:
        _fail(2, str(error))


def _ttl_s(text: str) -> int:
    match = _TTL.match(text.strip())
    _check(match is not None, f"--ttl {text!r}: give seconds or a number with s, m, h or d")
    assert match is not None, "checked above"
    ttl_s = int(match[1]) * _UNIT_S[match[2]]
    _check(ttl_s <= MAX_TTL_S, f"--ttl {text!r} is longer than {MAX_TTL_S // 86_400} days")
    return ttl_s


def _signer(settings: Settings, key_file: Path | None, kid: str | None, data_dir: Path
            ) -> TokenSigner:
    try:
        if key_file is not None:
            key, algorithm = private_key(key_file)
            return TokenSigner(key, algorithm, kid, settings.auth_issuer, settings.auth_audience)
        signer = TokenSigner.from_settings(with_development_secret(settings, data_dir))
    except KeyConfigError as error:
        _fail(1, str(error))
    return signer


def _check(is_valid: bool, message: str) -> None:
    if not is_valid:
        _fail(2, message)


def _fail(code: int, message: str) -> NoReturn:
    console.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)
