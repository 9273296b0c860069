"""The audit of the ledger's event stores, behind `ledger audit`: one module per job.

    stores = await find_stores((service, pool, schema) for ...)  # pools are the caller's
    report = await verify_stores(stores, services)             # chains and invariants
    history = await replay_account(stores.stores["account"], account_id, as_of)
    story = await transfer_story(stores, transfer_id)          # across every service
    await export_period(stores, services, since, until, path)
    file_report = verify_export(path)                          # offline, no database
"""

from ledger.auditing.export import ExportReport, PeriodNotOver, events_in_period, export_period
from ledger.auditing.findings import Finding
from ledger.auditing.offline import FileBreak, FileReport, verify_export
from ledger.auditing.replay import (
    AccountHistory,
    HistoryLine,
    UnreplayableStream,
    replay_account,
)
from ledger.auditing.stores import AuditStores, find_stores
from ledger.auditing.times import format_instant, parse_instant
from ledger.auditing.transfer import StoryLine, transfer_story
from ledger.auditing.verification import (
    ServiceCheck,
    VerifyReport,
    events_to_check,
    verify_stores,
)

__all__ = [
    "AccountHistory",
    "AuditStores",
    "ExportReport",
    "FileBreak",
    "FileReport",
    "Finding",
    "HistoryLine",
    "PeriodNotOver",
    "ServiceCheck",
    "StoryLine",
    "UnreplayableStream",
    "VerifyReport",
    "events_in_period",
    "events_to_check",
    "export_period",
    "find_stores",
    "format_instant",
    "parse_instant",
    "replay_account",
    "transfer_story",
    "verify_export",
    "verify_stores",
]
