"""The `ledger` command line."""

from __future__ import annotations

import typer

from ledger.cli import audit, demo, operations, projections, run, sagas, tokens

app = typer.Typer(
    help="Run, repair and audit the ledger.", no_args_is_help=True, pretty_exceptions_enable=False
)
app.command()(run.up)
app.command()(run.serve)
app.command()(operations.migrate)
app.command()(operations.status)
app.add_typer(projections.app, name="projections", help="List, rebuild and verify projections.")
app.add_typer(audit.app, name="audit", help="Verify, replay and export the audit trail.")
app.add_typer(sagas.app, name="sagas", help="Inspect and retry sagas.")
app.add_typer(tokens.app, name="token", help="Create access tokens.")
app.command()(demo.demo)


def main() -> None:
    """Entry point of the `ledger` console script."""
    app()
