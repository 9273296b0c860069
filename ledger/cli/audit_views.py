"""How `ledger audit` shows its results: rich tables and lines for people, JSON for scripts.

Pure rendering: every function takes what `ledger.auditing` found and returns a table, a
line of markup or a JSON-ready object.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rich.markup import escape
from rich.table import Table

from account_service.views import balance_of
from ledger.auditing import (
    AccountHistory,
    ExportReport,
    FileReport,
    HistoryLine,
    StoryLine,
    VerifyReport,
    format_instant,
)
from ledger.money import AmountError, Assets

_EFFECT_SUFFIX = {"posted": "", "held": " held", "released": " released"}


def money(assets: Assets, amount_minor: int, currency: str, *, signed: bool = False) -> str:
    """Minor units as the API writes them ("12.34"); unknown assets stay in minor units."""
    try:
        text = assets.format(amount_minor, currency)
    except AmountError:
        text = f"{amount_minor} minor units"
    return f"+{text}" if signed and amount_minor > 0 else text


def shown_time(instant: datetime) -> str:
    """An instant in UTC, to the millisecond, for tables."""
    return format_instant(instant)[:23].replace("T", " ")


# --- verify ------------------------------------------------------------------------------


def verify_summary(report: VerifyReport) -> str:
    """The green line of a clean verification."""
    services = ", ".join(check.service for check in report.services)
    return (
        f"[bold green]✓ no break[/]: {report.streams:,} streams and {report.events:,} events"
        f" checked ({services}); hash chains recompute, versions have no gap"
        + (f", {report.accounts:,} accounts fold to their balances, entries and holds"
           if any(check.service == "account" for check in report.services) else "")
    )  # fmt: skip


def verify_failure(report: VerifyReport) -> str:
    """The red line naming the first break, and how many more there are."""
    first = report.findings[0]
    more = len(report.findings) - 1
    tail = f" (and {more} more break{'s' if more > 1 else ''}: --json lists them)" if more else ""
    return (
        f"[bold red]✗ break[/] in {escape(first.place)}: {escape(first.reason)}"
        f" [dim]\\[{first.check}][/]{tail}"
    )


def verify_json(report: VerifyReport) -> dict[str, Any]:
    """The verification for scripts."""
    return {
        "clean": report.is_clean,
        "services": [
            {"service": c.service, "schema": c.schema, "streams": c.streams, "events": c.events}
            for c in report.services
        ],
        "streams": report.streams, "events": report.events, "accounts": report.accounts,
        "missing_schemas": report.missing,
        "breaks": [finding.as_json() for finding in report.findings],
    }  # fmt: skip


def file_summary(report: FileReport) -> str:
    """The green line of an intact export."""
    continued = (
        f"; {report.continued_streams:,} continue an earlier period"
        if report.continued_streams else ""
    )  # fmt: skip
    return (
        f"[bold green]✓ intact[/]: {escape(str(report.path))} holds {report.events:,} events in"
        f" {report.streams:,} streams ({escape(str(report.header.get('since')))} to"
        f" {escape(str(report.header.get('until')))}); every hash recomputes and links{continued}"
    )


def file_failure(report: FileReport) -> str:
    """The red line naming the first break of an export."""
    first = report.breaks[0]
    more = len(report.breaks) - 1
    tail = f" (and {more} more: --json lists them)" if more else ""
    return (
        f"[bold red]✗ break[/] in {escape(str(report.path))} at {escape(first.place)}:"
        f" {escape(first.reason)}{tail}"
    )


def file_json(report: FileReport) -> dict[str, Any]:
    """The offline verification for scripts."""
    return {
        "intact": report.is_intact, "file": str(report.path), "header": report.header,
        "events": report.events, "streams": report.streams,
        "continued_streams": report.continued_streams,
        "breaks": [found.as_json() for found in report.breaks],
    }  # fmt: skip


# --- replay ------------------------------------------------------------------------------


def history_table(history: AccountHistory, assets: Assets) -> Table:
    """The account's events, one row each, with the balance after each."""
    table = Table(title=escape(f"account {history.account_id} ({history.currency})"),
                  title_justify="left")  # fmt: skip
    for name, justify in (("time (UTC)", "left"), ("#", "right"), ("event", "left"),
                          ("amount", "right"), ("balance after", "right"), ("transfer", "left"),
                          ("correlation id", "left"), ("actor", "left")):  # fmt: skip
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for line in history.lines:
        table.add_row(*map(escape, (
            shown_time(line.recorded_at), str(line.stream_version), line.event_type,
            _amount(line, assets, history.currency),
            money(assets, line.balance_minor, history.currency),
            line.transfer_id or "", line.correlation_id or "", line.actor or "",
        )))  # fmt: skip
    return table


def balance_line(history: AccountHistory, assets: Assets) -> str:
    """The balance at the instant, in the balance endpoint's terms (in minor units when this
    shell's settings do not know the asset's scale, as the table shows it then)."""
    state, currency = history.state, history.currency
    posted = state.posted_minor if state else 0
    debits = state.pending_debits_minor if state else 0
    credits = state.pending_credits_minor if state else 0
    instant = format_instant(history.as_of) if history.as_of else "now"
    return (
        f"[bold]balance at {instant}[/]: {money(assets, posted, currency)} {escape(currency)}"
        f" (available {money(assets, posted - debits, currency)},"
        f" pending debits {money(assets, debits, currency)},"
        f" pending credits {money(assets, credits, currency)};"
        f" version {state.version if state else 0})"
    )


def history_json(history: AccountHistory, assets: Assets) -> dict[str, Any]:
    """The replay for scripts; `balance` is what the balance endpoint answers."""
    currency = history.currency
    balance = balance_of(history.account_id, currency, history.state, history.as_of, assets)
    return {
        "account_id": history.account_id, "currency": currency,
        "as_of": format_instant(history.as_of) if history.as_of else None,
        "events": [_line_json(line, assets, currency) for line in history.lines],
        "balance": balance.model_dump(mode="json"),
    }  # fmt: skip


def story_table(transfer_id: str, story: list[StoryLine]) -> Table:
    """The transfer's events across services, in time order. The transfer's own streams are
    shown by their category; a correlation id shared by every event goes in the title."""
    correlations = {line.correlation_id for line in story}
    is_one_correlation = len(correlations) == 1
    title = f"transfer {transfer_id}"
    if is_one_correlation:
        title += f" (correlation id {story[0].correlation_id or 'none'})"
    table = Table(title=escape(title), title_justify="left")
    columns = ["time (UTC)", "service", "stream", "#", "event", "detail"]
    columns += ["actor"] if is_one_correlation else ["correlation id", "actor"]
    for name in columns:
        table.add_column(name, overflow="fold")
    for line in story:
        own = line.stream_id.removesuffix(f"-{transfer_id}")
        stream = own if own != line.stream_id else line.stream_id
        cells = [shown_time(line.recorded_at), line.service, stream, str(line.stream_version),
                 line.event_type, line.detail]  # fmt: skip
        cells += [] if is_one_correlation else [line.correlation_id or ""]
        table.add_row(*map(escape, [*cells, line.actor or ""]))
    return table


def story_json(transfer_id: str, story: list[StoryLine]) -> dict[str, Any]:
    """The transfer's story for scripts."""
    return {"transfer_id": transfer_id, "events": [_story_line_json(line) for line in story]}


def export_summary(report: ExportReport, since: datetime, until: datetime) -> str:
    """The green line of a finished export."""
    return (
        f"[bold green]✓ exported[/] {report.events:,} events of {report.streams:,} streams"
        f" recorded from {format_instant(since)} to {format_instant(until)} to"
        f" {escape(str(report.path))}"
    )


def _story_line_json(line: StoryLine) -> dict[str, Any]:
    return {
        "recorded_at": format_instant(line.recorded_at), "service": line.service,
        "stream_id": line.stream_id, "stream_version": line.stream_version,
        "event_id": line.event_id, "event_type": line.event_type, "detail": line.detail,
        "correlation_id": line.correlation_id, "actor": line.actor, "data": line.data,
    }  # fmt: skip


def _amount(line: HistoryLine, assets: Assets, currency: str) -> str:
    if line.amount_minor is None or line.effect is None:
        return ""
    text = money(assets, line.amount_minor, currency, signed=True)
    return f"{text}{_EFFECT_SUFFIX[line.effect]}"


def _line_json(line: HistoryLine, assets: Assets, currency: str) -> dict[str, Any]:
    amount = None if line.amount_minor is None else money(assets, line.amount_minor, currency)
    return {
        "recorded_at": format_instant(line.recorded_at), "stream_version": line.stream_version,
        "event_id": line.event_id, "event_type": line.event_type, "amount": amount,
        "amount_minor": line.amount_minor, "effect": line.effect,
        "balance_after": money(assets, line.balance_minor, currency),
        "available_after": money(assets, line.available_minor, currency),
        "transfer_id": line.transfer_id, "correlation_id": line.correlation_id,
        "actor": line.actor,
    }  # fmt: skip
