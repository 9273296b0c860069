"""The `ledger` command line."""

from __future__ import annotations

import typer

from ledger.cli import run

app = typer.Typer(
    help="Run, repair and audit the ledger.", no_args_is_help=True, pretty_exceptions_enable=False
)
app.command()(run.up)
app.command()(run.serve)


def main() -> None:
    """Entry point of the `ledger` console script."""
    app()
