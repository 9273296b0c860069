"""`ledger up` and `ledger serve`: run the services behind one HTTP port."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from rich.console import Console

from ledger.cli.servers import resolved_servers
from ledger.host import Service, ServiceHost
from ledger.http import create_app
from ledger.logs import configure_logging
from ledger.services import available_services
from ledger.settings import Settings

console = Console(stderr=True)

PortOption = Annotated[
    int | None, typer.Option("--port", min=1, max=65535, help="HTTP port [default: 8000].")
]
DataDirOption = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Where embedded servers keep their data [default: .ledger]."),
]


def up(
    port: PortOption = None,
    data_dir: DataDirOption = None,
    no_embedded: Annotated[
        bool, typer.Option("--no-embedded", help="Refuse to start embedded servers.")
    ] = False,
) -> None:
    """Run every service in one process on one port; embedded servers when none are set."""
    _serve(list(available_services().values()), port, data_dir, allow_embedded=not no_embedded)


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


def _serve(
    services: list[Service], port: int | None, data_dir: Path | None, *, allow_embedded: bool
) -> None:
    settings = Settings()
    configure_logging(settings.log_level, as_json=settings.log_json)
    port = port or settings.http_port
    data_dir = data_dir or settings.data_dir
    try:
        with resolved_servers(
            settings, data_dir, allow_embedded=allow_embedded, console=console
        ) as resolved:
            app = create_app(ServiceHost(resolved, services))
            names = ", ".join(service.name for service in services) or "no domain services yet"
            console.print(
                f"[bold green]ledger[/] serving {names} on http://{settings.http_host}:{port}"
                f"  (API docs: http://{settings.http_host}:{port}/docs) - press Ctrl-C to stop"
            )
            # Open event streams would otherwise hold Ctrl-C until their clients leave.
            uvicorn.run(
                app, host=settings.http_host, port=port, log_config=None, ws="none",
                timeout_graceful_shutdown=max(1, round(settings.shutdown_grace_s)),
            )  # fmt: skip
    except ValueError as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(2) from None
    console.print("[dim]ledger stopped[/]")
