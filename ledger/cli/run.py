"""`ledger up` and `ledger serve`: run the services behind one HTTP port."""

from __future__ import annotations

import getpass
import signal
from pathlib import Path
from types import FrameType
from typing import Annotated, Final

import typer
import uvicorn
from rich.console import Console
from rich.markup import escape

from ledger.auth import AUTH_OFF_WARNING, Scope, TokenSigner, verifier_of, with_development_secret
from ledger.auth.scopes import SUBJECT_PATTERN
from ledger.cli.failures import fail, reported_failures, settings_or_exit
from ledger.cli.servers import resolved_servers
from ledger.collector import tune_for_serving
from ledger.host import Service, ServiceHost
from ledger.http import create_app
from ledger.logs import configure_logging
from ledger.services import available_services
from ledger.settings import Settings

console = Console(stderr=True)
DEV_ADMIN_TOKEN_TTL_S: Final = 24 * 3600
"""Lifetime of the admin token `ledger up` prints in development."""

PortOption = Annotated[
    int | None, typer.Option("--port", min=1, max=65535, help="HTTP port \\[default: 8000].")
]
DataDirOption = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Where embedded servers keep their data \\[default: .ledger]."),
]


def up(
    port: PortOption = None,
    data_dir: DataDirOption = None,
    no_embedded: Annotated[
        bool, typer.Option("--no-embedded", help="Refuse to start embedded servers.")
    ] = False,
) -> None:
    """Run every service in one process on one port; embedded servers when none are set."""
    _serve(list(available_services().values()), port, data_dir, allow_embedded=not no_embedded,
           prints_admin_token=True)


def serve(
    service: Annotated[str, typer.Argument(help="account, risk, trade or saga.")],
    port: PortOption = None,
) -> None:
    """Run one service alone, against the servers the environment names."""
    services = available_services()
    if service not in services:
        known = ", ".join(sorted(services)) or "none in this build"
        raise typer.BadParameter(f"unknown service {service!r} (known: {known})")
    _serve([services[service]], port, None, allow_embedded=False)


class _Terminated(Exception):
    """SIGTERM (`kill`, systemd, `docker stop`): stop as Ctrl-C does."""


def _on_sigterm(_signal: int, _frame: FrameType | None) -> None:
    raise _Terminated


def _serve(
    services: list[Service], port: int | None, data_dir: Path | None, *, allow_embedded: bool,
    prints_admin_token: bool = False,
) -> None:
    # uvicorn answers SIGTERM with a graceful shutdown, then raises the signal again with
    # the handler it found: with the default one the process died there, before the
    # embedded servers were stopped (they ran on as orphans). This one unwinds instead.
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        _serve_until_stopped(services, port, data_dir, allow_embedded=allow_embedded,
                             prints_admin_token=prints_admin_token)  # fmt: skip
    except _Terminated:
        console.print("[dim]ledger stopped (SIGTERM)[/]")
    finally:
        signal.signal(signal.SIGTERM, previous)


def _serve_until_stopped(
    services: list[Service], port: int | None, data_dir: Path | None, *, allow_embedded: bool,
    prints_admin_token: bool,
) -> None:
    settings = settings_or_exit()
    configure_logging(settings.log_level, as_json=settings.log_json)
    tune_for_serving()
    port = port or settings.http_port
    data_dir = data_dir or settings.data_dir
    try:
        try:
            settings = _access_settings(settings, data_dir)
        except OSError as error:
            fail(f"cannot use the data directory {data_dir}: {error.strerror or error}")
        resolving = resolved_servers(
            settings, data_dir, allow_embedded=allow_embedded, console=console
        )
        with reported_failures(), resolving as resolved:  # servers that do not start, ...
            app = create_app(ServiceHost(resolved, services))
            names = ", ".join(service.name for service in services) or "no domain services yet"
            console.print(
                f"[bold green]ledger[/] serving {names} on http://{settings.http_host}:{port}"
                f"  (API docs: http://{settings.http_host}:{port}/docs) - press Ctrl-C to stop"
            )
            if prints_admin_token:
                _print_admin_token(settings)
            # Open event streams would otherwise hold Ctrl-C until their clients leave.
            uvicorn.run(
                app, host=settings.http_host, port=port, log_config=None, ws="none",
                timeout_graceful_shutdown=max(1, round(settings.shutdown_grace_s)),
            )  # fmt: skip
    except ValueError as error:
        console.print(f"[red]error:[/] {escape(str(error))}", soft_wrap=True)
        raise typer.Exit(2) from None
    console.print("[dim]ledger stopped[/]")


def _access_settings(settings: Settings, data_dir: Path) -> Settings:
    """`settings` with the token key in force (in development without one, the data
    directory's secret); ValueError, before any server starts, when they cannot check tokens
    (no key, or `LEDGER_AUTH=off` in production). Warns on every start with checks off."""
    settings = with_development_secret(settings, data_dir)
    verifier_of(settings)
    if settings.auth == "off":
        console.print(f"[bold red]warning:[/] {AUTH_OFF_WARNING}")
    return settings


def _print_admin_token(settings: Settings) -> None:
    """In development, an admin token to try the API with (subject: the local user)."""
    if settings.environment != "development" or settings.auth == "off":
        return
    if settings.auth_jwt_secret is None:
        console.print("[dim]tokens: `ledger token create --private-key ...` (no HS256 secret)[/]")
        return
    subject = _local_user()
    token = TokenSigner.from_settings(settings).issue(subject, {Scope.ADMIN},
                                                      ttl_s=DEV_ADMIN_TOKEN_TTL_S)  # fmt: skip
    hours = DEV_ADMIN_TOKEN_TTL_S // 3600
    console.print(f"admin token for [bold]{subject}[/] (valid {hours} h; others: `ledger token"
                  " create`), send it as `Authorization: Bearer <token>`:")  # fmt: skip
    console.print(token, soft_wrap=True, highlight=False, markup=False)


def _local_user() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        return "admin"
    return user if SUBJECT_PATTERN.match(user) else "admin"
