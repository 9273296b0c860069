"""`ledger demo`: the fastest way to see the ledger work, against a running one.

It opens accounts, deposits, requests transfers, a trade and one transfer that is refused
(demo_story.py), then prints the balances (and that they add up to what was deposited) and
each saga's steps. Exit codes: 0 all went as the story expects, 1 the ledger is unreachable,
answered unexpectedly, or something did not go as expected, 2 bad arguments.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Final

import orjson
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ledger.auth import KeyConfigError, Scope, TokenSigner, has_keys, with_development_secret
from ledger.auth.keys import DEV_SECRET_FILE
from ledger.cli.demo_client import LedgerClient, LedgerUnreachable, UnexpectedAnswer
from ledger.cli.demo_story import Report, Settled, tell
from ledger.cli.failures import settings_or_exit
from ledger.cli.run import DataDirOption

DEFAULT_URL: Final = "http://127.0.0.1:8000"
DEMO_TOKEN_TTL_S: Final = 3600
"""Lifetime of the token the demo makes itself from a local `ledger up`'s secret."""
_STATUS_STYLES: Final = {"completed": "green", "rejected": "yellow", "failed": "red",
                         "requires_intervention": "bold red", "pending": "cyan"}  # fmt: skip
_MARKS: Final = {"succeeded": "✓", "refused": "✗", "failed": "!"}


def _url(value: str) -> str:
    if not value.startswith(("http://", "https://")) or len(value) < len("http://x"):
        raise typer.BadParameter(f"{value!r} is not an http:// or https:// URL")
    return value.rstrip("/")


def demo(
    url: Annotated[str, typer.Option("--url", help="The running ledger's HTTP address.",
                                     callback=_url)] = DEFAULT_URL,
    token: Annotated[str | None, typer.Option("--token", envvar="LEDGER_TOKEN",
                                              help="Bearer token, when the ledger asks for one.",
                                              show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    data_dir: DataDirOption = None,
) -> None:  # fmt: skip
    """Open a few accounts on a running ledger, move money between them (transfers, a trade,
    one refused transfer) and print the balances and sagas. Without --token, a local
    `ledger up`'s development secret (in --data-dir) signs one."""
    console = Console(stderr=True)
    token = token or development_token(data_dir)

    async def run() -> Report:
        async with LedgerClient(url, token) as ledger:
            return await tell(ledger, lambda line: console.print(f"[dim]→[/] {line}",
                                                                 soft_wrap=True))

    try:
        report = asyncio.run(run())
    except (LedgerUnreachable, UnexpectedAnswer) as error:
        console.print(Text.assemble(("error:", "red"), f" {error}"), soft_wrap=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(orjson.dumps(document(report), option=orjson.OPT_INDENT_2).decode())
    else:
        _print(report)
    surprises = report.surprises()
    if surprises:
        console.print(Text.assemble(("error:", "red"), " not as expected: "
                                    + "; ".join(surprises)), soft_wrap=True)  # fmt: skip
        raise typer.Exit(1)


def development_token(data_dir: Path | None) -> str | None:
    """An hour's admin token, in development, signed with the configured HS256 secret or
    else the one a local `ledger up` keeps in the data directory; None when there is none."""
    settings = settings_or_exit()
    if settings.environment != "development":
        return None
    try:
        if not has_keys(settings):
            secret_dir = data_dir or settings.data_dir
            if not (secret_dir / DEV_SECRET_FILE).exists():
                return None
            settings = with_development_secret(settings, secret_dir)
        if settings.auth_jwt_secret is None:
            return None  # public keys only: tokens come from their private keys' holder
        signer = TokenSigner.from_settings(settings)
    except KeyConfigError:
        return None  # an unusable secret signs nothing; the ledger's 401 says what to do
    return signer.issue("demo", {Scope.ADMIN}, ttl_s=DEMO_TOKEN_TTL_S)


def _print(report: Report) -> None:
    out = Console()
    out.print(balances_table(report))
    out.print(totals_text(report))
    out.print(sagas_table(report))


def balances_table(report: Report) -> Table:
    """Each account the demo opened, with its balances."""
    table = Table(title="balances", title_justify="left")
    for name in ("owner", "currency", "account"):
        table.add_column(name, no_wrap=True)
    for name in ("balance", "available", "pending debits", "pending credits"):
        table.add_column(name, justify="right", no_wrap=True)
    for account in report.accounts:
        table.add_row(account["owner"], account["currency"], account["id"], account["balance"],
                      account["available"], account["pending_debits"],
                      account["pending_credits"])  # fmt: skip
    return table


def totals_text(report: Report) -> Text:
    """Per currency: deposited against held, and whether they are equal."""
    text = Text()
    held = report.held()
    for currency, deposited in report.deposited().items():
        total = held.get(currency, Decimal(0))
        is_equal = total == deposited
        text.append(f"{currency}: deposited {deposited}, held {total} ")
        text.append("✓ nothing created or lost\n" if is_equal else "✗ does not add up\n",
                    style="green" if is_equal else "bold red")  # fmt: skip
    return text


def sagas_table(report: Report) -> Table:
    """Each transfer and trade: its saga's outcome and steps (↩ a compensation)."""
    table = Table(title="sagas", title_justify="left", caption="✓ replied  ✗ refused"
                  "  ! failed, retried  ↩ compensation", caption_justify="left")  # fmt: skip
    table.add_column("id", no_wrap=True)
    table.add_column("what")
    table.add_column("status", no_wrap=True)
    table.add_column("reason")
    table.add_column("steps")
    for settled in report.settled:
        status = _status(settled)
        reason = settled.settlement.get("reason") or ""
        table.add_row(settled.settlement["id"], f"{settled.request.kind} {settled.request.label}",
                      Text(status, style=_STATUS_STYLES.get(status, "")), reason,
                      _steps(settled))  # fmt: skip
    return table


def _status(settled: Settled) -> str:
    if settled.saga is not None:
        return str(settled.saga["status"])
    return str(settled.settlement["status"])


def _steps(settled: Settled) -> str:
    if settled.saga is None:
        return "(the token may not read sagas)"
    marks = []
    for step in settled.saga["steps"]:
        mark = _MARKS.get(step["outcome"] or "", "…")
        marks.append(f"{'↩' if step['is_compensation'] else ''}{step['step']}{mark}")
    return " ".join(marks)


def document(report: Report) -> dict[str, Any]:
    """The `--json` form: accounts, totals per currency, and each settlement with its saga."""
    held = report.held()
    return {
        "tag": report.tag,
        "accounts": report.accounts,
        "totals": {currency: {"deposited": str(deposited),
                              "held": str(held.get(currency, Decimal(0)))}
                   for currency, deposited in report.deposited().items()},
        "settlements": [{"kind": s.request.kind, "label": s.request.label,
                         "expected": s.request.expected, "settlement": s.settlement,
                         "saga": s.saga} for s in report.settled],
        "surprises": report.surprises(),
    }  # fmt: skip
