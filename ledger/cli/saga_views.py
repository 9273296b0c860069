"""How `ledger sagas` shows sagas: rich tables for people, JSON documents for scripts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from ledger.cli.saga_reads import Run
from ledger.cli.saga_timeline import IN_FLIGHT, Entry, Story, collapsed
from ledger.money import AmountError, Assets
from saga.contracts import SagaStatus
from trade_service.contracts import SettlementLeg

STATUS_STYLES: Final = {
    SagaStatus.RUNNING: "cyan",
    SagaStatus.COMPENSATING: "yellow",
    SagaStatus.COMPLETED: "green",
    SagaStatus.REJECTED: "yellow",
    SagaStatus.FAILED: "red",
    SagaStatus.REQUIRES_INTERVENTION: "bold red",
}
_OUTCOME_STYLES: Final = {
    "replied": "green", "compensated": "green", "refused": "yellow", "failed": "red",
    IN_FLIGHT: "cyan",
}  # fmt: skip
_TURN_STYLES: Final = {
    "completed": "bold green", "rejected": "bold yellow", "failed_turn": "bold red",
    "parked": "bold red", "compensating": "yellow", "retried": "cyan",
}  # fmt: skip


def runs_table(runs: list[Run], counts: dict[SagaStatus, int]) -> Table:
    """The sagas, one row each, with the counts by status (all sagas) as the caption."""
    table = Table(caption=_counts_caption(runs, counts), caption_justify="left")
    rows = [
        (run.saga_id, run.kind, run.status.value,
         (f"↩ {run.step}" if run.is_compensation else run.step) if run.step else "-",
         str(run.attempt) if run.attempt is not None else "-",
         when(run.started_at), when(run.updated_at))
        for run in runs
    ]  # fmt: skip
    # On a narrow terminal cells fold onto more lines; only the status always stays whole.
    table.add_column("id", overflow="fold", min_width=8)
    table.add_column("kind", overflow="fold")
    status_width = max((len(row[2]) for row in rows), default=0)
    table.add_column("status", no_wrap=True, min_width=max(status_width, len("status")))
    table.add_column("step", overflow="fold")
    table.add_column("attempts", justify="right", overflow="fold")
    table.add_column("started")
    table.add_column("updated")
    for run, row in zip(runs, rows, strict=True):
        table.add_row(row[0], row[1], status_text(run.status), *row[3:])
    return table


def _counts_caption(runs: list[Run], counts: dict[SagaStatus, int]) -> Text:
    total = sum(counts.values())
    text = Text()
    for status in SagaStatus:
        if counts.get(status):
            text.append(f"{status.value} ", style=STATUS_STYLES[status])
            text.append(f"{counts[status]}   ")
    text.append(f"total {total}; showing {len(runs)}, most recently changed first")
    return text


def runs_document(runs: list[Run], counts: dict[SagaStatus, int]) -> dict[str, Any]:
    """The `--json` form of `ledger sagas list`."""
    return {
        "items": [
            {"saga_id": run.saga_id, "kind": run.kind, "status": run.status.value,
             "step": run.step, "is_compensation": run.is_compensation, "attempt": run.attempt,
             "reason": run.reason, "last_error": run.last_error,
             "started_at": run.started_at.isoformat(), "updated_at": run.updated_at.isoformat()}
            for run in runs
        ],
        "counts": {status.value: n for status, n in counts.items()},
    }  # fmt: skip


def story_view(told: Story, assets: Assets) -> RenderableType:
    """The saga's header, its legs, its timeline, and how it ended (or why it is parked)."""
    state = told.state
    header = Text.assemble(
        ("saga ", "bold"), (state.saga_id, "bold"), f"  {state.kind}  ",
        status_text(state.status),
        f"\nstarted {when(told.started_at)}, last change {when(told.updated_at)}"
        f" ({duration(_seconds(told.started_at, told.updated_at))} later)",
    )  # fmt: skip
    return Group(header, _legs_table(state.legs, assets), _timeline_table(told), _ending(told))


def _legs_table(legs: tuple[SettlementLeg, ...], assets: Assets) -> Table:
    table = Table(title="legs", title_justify="left", box=None, pad_edge=False)
    for name in ("leg", "from", "to"):
        table.add_column(name, no_wrap=True)
    table.add_column("amount", justify="right", no_wrap=True)
    for leg in legs:
        table.add_row(leg.leg_id, leg.from_account, leg.to_account,
                      f"{amount(leg.amount_minor, leg.currency, assets)} {leg.currency}")
    return table


def _timeline_table(told: Story) -> Table:
    table = Table(title="timeline", title_justify="left")
    table.add_column("at (UTC)", no_wrap=True)
    table.add_column("+", justify="right", no_wrap=True)
    table.add_column("step / turn")
    table.add_column("try", justify="right")
    table.add_column("outcome")
    table.add_column("took", justify="right", no_wrap=True)
    table.add_column("detail", overflow="fold")
    for entry in collapsed(told.entries):
        took = entry.duration_s
        table.add_row(
            entry.at.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3],
            duration(_seconds(told.started_at, entry.at)), _what(entry),
            str(entry.attempt) if entry.attempt is not None else "",
            _outcome(entry), duration(took) if took is not None else "", entry.detail or "",
        )  # fmt: skip
    return table


def _what(entry: Entry) -> Text:
    if entry.kind == "compensation":
        return Text(f"↩ {entry.step}")
    if entry.kind == "step":
        return Text(entry.step or "")
    if entry.kind == "skipped":
        return Text(f"{entry.step} …", style="dim")
    style_key = "failed_turn" if entry.kind == "failed" else entry.kind
    return Text(entry.kind, style=_TURN_STYLES.get(style_key, "bold"))


def _outcome(entry: Entry) -> Text:
    label = entry.outcome or ""
    return Text(label, style=_OUTCOME_STYLES.get(label, ""))


def _ending(told: Story) -> Text:
    state = told.state
    parked = told.parked
    if parked is not None:
        return Text.assemble(
            ("parked", "bold red"), f" at step {parked.step}: {parked.detail}",
            f"\nsend it on with: ledger sagas retry {state.saga_id}",
        )  # fmt: skip
    if state.status in (SagaStatus.REJECTED, SagaStatus.FAILED):
        why = f"{state.reason}: {state.detail}" if state.detail else state.reason
        return Text.assemble(("outcome ", "bold"), status_text(state.status), f" ({why})")
    return Text.assemble(("outcome ", "bold"), status_text(state.status))


def story_document(told: Story, assets: Assets) -> dict[str, Any]:
    """The `--json` form of `ledger sagas show`."""
    state, parked = told.state, told.parked
    return {
        "saga_id": state.saga_id, "kind": state.kind, "status": state.status.value,
        "reason": state.reason, "detail": state.detail, "last_error": state.last_error,
        "started_at": told.started_at.isoformat(), "updated_at": told.updated_at.isoformat(),
        "legs": [
            {"leg_id": leg.leg_id, "from_account": leg.from_account,
             "to_account": leg.to_account, "amount_minor": leg.amount_minor,
             "amount": amount(leg.amount_minor, leg.currency, assets), "currency": leg.currency}
            for leg in state.legs
        ],
        "parked": None if parked is None else {"step": parked.step, "error": parked.detail,
                                                "at": parked.at.isoformat()},
        "timeline": [_entry_document(entry) for entry in told.entries],
    }  # fmt: skip


def _entry_document(entry: Entry) -> dict[str, Any]:
    return {
        "at": entry.at.isoformat(), "kind": entry.kind, "step": entry.step,
        "attempt": entry.attempt, "outcome": entry.outcome,
        "ended_at": None if entry.ended_at is None else entry.ended_at.isoformat(),
        "duration_s": entry.duration_s, "detail": entry.detail,
    }  # fmt: skip


def status_text(status: SagaStatus) -> Text:
    """The status, in its colour."""
    return Text(status.value, style=STATUS_STYLES[status])


def amount(amount_minor: int, asset: str, assets: Assets) -> str:
    """The amount as a decimal of its asset; in minor units when the asset's scale is not
    configured where the command runs."""
    try:
        return assets.format(amount_minor, asset)
    except AmountError:
        return f"{amount_minor} (minor units)"


def when(moment: datetime) -> str:
    """A moment in UTC, to the second."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: float) -> str:
    """A short human duration: 12 ms, 3.4 s, 5 min 6 s, 2 h 3 min."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, whole_s = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {whole_s} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def _seconds(start: datetime, end: datetime) -> float:
    return (end - start).total_seconds()
