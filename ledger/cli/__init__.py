"""The `ledger` command line."""

import typer

app = typer.Typer(help="Run, repair and audit the ledger.", no_args_is_help=True)


@app.callback()
def _root() -> None:
    """Run, repair and audit the ledger."""


def main() -> None:
    """Entry point of the `ledger` console script."""
    app()
