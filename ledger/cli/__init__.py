"""The `ledger` command line."""

from __future__ import annotations

import sys

import typer

from ledger.cli import audit, demo, operations, projections, prune, run, sagas, tokens

app = typer.Typer(
    help="Run, repair and audit the ledger.", no_args_is_help=True, pretty_exceptions_enable=False
)
app.command()(run.up)
app.command()(run.serve)
app.command()(operations.migrate)
app.command()(operations.status)
app.command()(prune.prune)
app.add_typer(projections.app, name="projections", help="List, rebuild and verify projections.")
app.add_typer(audit.app, name="audit", help="Verify, replay and export the audit trail.")
app.add_typer(sagas.app, name="sagas", help="Inspect and retry sagas.")
app.add_typer(tokens.app, name="token", help="Create access tokens.")
app.command()(demo.demo)


USAGE_ERROR_EXIT: int = 2
"""The exit code of a command line the commands cannot run (click's convention)."""


def main() -> None:
    """Entry point of the `ledger` console script: an error is one line on stderr."""
    try:
        code = app(standalone_mode=False, prog_name="ledger")
    except typer.Abort:
        print("ledger: aborted", file=sys.stderr)
        sys.exit(1)
    except typer.TyperException as error:  # typer's click errors: usage (exit 2) and others
        context = getattr(error, "ctx", None)
        where = context.command_path if context is not None else "ledger"
        hint = f" (see '{where} --help')" if error.exit_code == USAGE_ERROR_EXIT else ""
        print(f"{where}: {error.format_message()}{hint}", file=sys.stderr)
        sys.exit(error.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
