"""The account audit's pure parts: an account's stream folded with the domain's own
`evolve` while holds are watched (placed once, ended once), and the comparisons of the fold
with the balances row and the entries' totals."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime
from itertools import count
from types import MappingProxyType
from typing import Any

import pytest

from account_service.domain import Status
from eventstore import RecordedEvent
from ledger.auditing.account_fold import AccountFolder, OpenHold
from ledger.auditing.comparisons import EntriesTotal, balances_difference, entries_difference

STREAM = "account-a1"
_positions = count(1)


def recorded(version: int, event_type: str, **data: Any) -> RecordedEvent:
    return RecordedEvent(next(_positions), STREAM, version, uuid.uuid4(), event_type, data, {},
                         datetime(2024, 5, 1, tzinfo=UTC), 1, b"", b"")  # fmt: skip


def opened() -> RecordedEvent:
    return recorded(1, "AccountOpened", account_id="a1", owner="o", currency="USD",
                    overdraft_limit_minor=0)  # fmt: skip


def hold(version: int, event_type: str, hold_id: str = "t1:l1:debit", **more: Any
         ) -> RecordedEvent:  # fmt: skip
    fields: dict[str, Any] = {"hold_id": hold_id, "side": "debit", "transfer_id": "t1"}
    if event_type != "HoldCancelled":
        fields["amount_minor"] = 300
    if event_type in {"HoldPlaced", "HoldPosted"}:
        fields["kind"] = "transfer"
    return recorded(version, event_type, **(fields | more))


def folded(*events: RecordedEvent) -> AccountFolder:
    folder = AccountFolder(STREAM)
    for event in events:
        folder.add(event)
    return folder


def test_a_sound_stream_folds_to_the_domain_state_and_counts_its_movements() -> None:
    folder = folded(opened(), recorded(2, "Deposited", entry_id="e1", amount_minor=1_000),
                    hold(3, "HoldPlaced"), hold(4, "HoldPosted"),
                    recorded(5, "Withdrawn", entry_id="e2", amount_minor=200))  # fmt: skip

    assert folder.is_sound
    assert folder.state is not None
    assert (folder.state.posted_minor, folder.state.version) == (500, 5)
    assert (folder.movements, folder.deposits_minor, folder.withdrawals_minor) == (3, 1_000, 200)
    assert folder.transfers_net_minor == -300
    assert folder.open_holds() == []


def test_an_open_hold_is_reported_with_the_version_that_placed_it() -> None:
    folder = folded(opened(), recorded(2, "Deposited", entry_id="e1", amount_minor=1_000),
                    hold(3, "HoldPlaced"))  # fmt: skip

    assert folder.open_holds() == [OpenHold("a1", "t1:l1:debit", "t1", 3)]


def test_a_hold_that_ends_twice_stops_the_fold_at_the_second_end() -> None:
    folder = folded(opened(), recorded(2, "Deposited", entry_id="e1", amount_minor=1_000),
                    hold(3, "HoldPlaced"), hold(4, "HoldPosted"), hold(5, "HoldVoided"),
                    recorded(6, "Deposited", entry_id="e2", amount_minor=5))  # fmt: skip

    assert folder.finding is not None
    assert (folder.finding.stream_version, folder.finding.check) == (5, "holds")
    assert "ends a second time (it was posted)" in folder.finding.reason
    assert folder.events == 6
    assert folder.last_version == 6


def test_a_hold_placed_again_after_it_ended_is_a_break() -> None:
    folder = folded(opened(), hold(2, "HoldCancelled"), hold(3, "HoldPlaced"))

    assert folder.finding is not None
    assert folder.finding.stream_version == 3
    assert "placed again after it was cancelled" in folder.finding.reason


def test_a_hold_that_ends_without_being_placed_is_a_break() -> None:
    folder = folded(opened(), hold(2, "HoldVoided"))

    assert folder.finding is not None
    assert "never placed" in folder.finding.reason


def test_an_event_the_domain_cannot_read_is_a_break() -> None:
    folder = folded(opened(), recorded(2, "Deposited", entry_id="e1", amount_minor="lots"))

    assert folder.finding is not None
    assert (folder.finding.stream_version, folder.finding.check) == (2, "events")
    assert "does not decode" in folder.finding.reason


def test_what_the_domain_fold_refuses_is_a_break() -> None:
    folder = folded(recorded(1, "Deposited", entry_id="e1", amount_minor=5))

    assert folder.finding is not None
    assert folder.finding.check == "fold"
    assert "before AccountOpened" in folder.finding.reason


@pytest.mark.parametrize(
    ("events", "version", "reason"),
    [
        ([recorded(2, "Withdrawn", entry_id="e1", amount_minor=4_900)], 2,
         "available -4900 is below the overdraft limit of 0"),
        ([hold(2, "HoldPlaced")], 2, "available -300 is below the overdraft limit"),
        ([recorded(2, "AccountClosed"), recorded(3, "Deposited", entry_id="e1", amount_minor=5)],
         3, "Deposited after the account was closed"),
        ([recorded(2, "AccountFrozen", reason=None),
          recorded(3, "Deposited", entry_id="e1", amount_minor=5)],
         3, "Deposited on a frozen account"),
        ([recorded(2, "Deposited", entry_id="e1", amount_minor=5), recorded(3, "AccountClosed")],
         3, "closed with a balance of 5"),
        ([hold(2, "HoldPlaced", hold_id="t1:l1:credit", side="credit"),
          recorded(3, "AccountClosed")],
         3, "closed with a balance of 0 and 1 open hold(s)"),
    ],
)  # fmt: skip
def test_an_event_that_breaks_a_money_rule_is_a_break_though_it_folds(
    events: list[RecordedEvent], version: int, reason: str
) -> None:
    folder = folded(opened(), *events)

    assert folder.finding is not None
    assert (folder.finding.stream_version, folder.finding.check) == (version, "rules")
    assert reason in folder.finding.reason


def test_a_frozen_account_still_posts_and_voids_the_holds_it_had() -> None:
    folder = folded(opened(), recorded(2, "Deposited", entry_id="e1", amount_minor=1_000),
                    hold(3, "HoldPlaced"), hold(4, "HoldPlaced", hold_id="t2:l1:debit"),
                    recorded(5, "AccountFrozen", reason="review"), hold(6, "HoldPosted"),
                    hold(7, "HoldVoided", hold_id="t2:l1:debit"))  # fmt: skip

    assert folder.is_sound, folder.finding


def test_a_balances_row_equal_to_the_fold_has_no_difference() -> None:
    state = folded(opened(), recorded(2, "Deposited", entry_id="e", amount_minor=9)).state
    assert state is not None

    assert balances_difference(state, state) is None
    changed = replace(state, posted_minor=10, status=Status.FROZEN)
    difference = balances_difference(changed, state)
    assert difference is not None
    assert "posted_minor is 10 in the row but 9 by the events" in difference
    assert "status is frozen in the row but open by the events" in difference


@pytest.mark.parametrize(
    ("name", "in_row"),
    [("owner", "someone else"), ("currency", "EUR"), ("overdraft_limit_minor", 500),
     ("pending_debits_minor", 300), ("pending_credits_minor", 300), ("version", 3)],
)  # fmt: skip
def test_a_balances_row_differing_from_the_fold_in_any_field_is_named(
    name: str, in_row: Any
) -> None:
    state = folded(opened(), recorded(2, "Deposited", entry_id="e", amount_minor=9)).state
    assert state is not None

    difference = balances_difference(replace(state, **{name: in_row}), state)

    assert difference is not None
    assert f"{name} is {in_row} in the row but {getattr(state, name)} by the events" in difference


def test_a_balances_row_with_other_open_holds_than_the_fold_is_named() -> None:
    state = folded(opened(), recorded(2, "Deposited", entry_id="e", amount_minor=1_000),
                   hold(3, "HoldPlaced")).state  # fmt: skip
    assert state is not None
    released = replace(state, open_holds=MappingProxyType({}))

    difference = balances_difference(released, state)

    assert difference is not None
    assert "open holds differ" in difference
    assert "only by the events: ['t1:l1:debit']" in difference


def test_entries_must_match_the_movements_and_sum_to_the_balance() -> None:
    good = EntriesTotal(entries=2, amount_minor=700, last_balance_minor=700, positions=12,
                        first_unfollowed_position=None)  # fmt: skip

    assert entries_difference(good, 700, 2, 12) is None
    assert "1 entries for 2 movements" in str(entries_difference(replace(good, entries=1), 700,
                                                                 2, 12))  # fmt: skip
    assert "not made from" in str(entries_difference(good, 700, 2, 13))
    assert "sum to 700 minor units, the balance is 800" in str(entries_difference(good, 800, 2,
                                                                                  12))  # fmt: skip
    broken = replace(good, first_unfollowed_position=7)
    assert "global position 7 does not follow" in str(entries_difference(broken, 700, 2, 12))
