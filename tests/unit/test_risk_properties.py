"""Random assess / commit / release / time passing never lets committed outflow exceed the limit.

A model keeps the time and amount of every commit; after each step every 24-hour window is
checked against the daily limit. It is enough to check the windows that end at a commit:
any other window holds no more than the one ending at its latest commit.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)

from risk_service.contracts import (
    ExposureCancelled,
    ExposureReleased,
    ExposureReserved,
    Limits,
    MovementRefused,
)
from risk_service.domain import (
    AccountView,
    MovementRequest,
    RiskState,
    assess,
    commit,
    fold,
    initial_state,
    release,
)

WINDOW = timedelta(hours=24)
START = datetime(2024, 5, 1, 0, 0, 0, tzinfo=UTC)
PAYER = AccountView("alice", "USD", "open")
PAYEE = AccountView("bob", "USD", "open")

# Steps of time that matter: within a second, a minute, around a day's edge, and anything.
_STEPS_S = st.one_of(
    st.integers(0, 90),
    st.sampled_from([3_600, 86_340, 86_399, 86_400, 86_401, 86_459, 86_460]),
    st.integers(0, 2 * 86_400),
)


class RiskAccount(RuleBasedStateMachine):
    """One account's risk state driven at random, beside a model of what really moved."""

    exposures = Bundle("exposures")

    def __init__(self) -> None:
        super().__init__()
        self.state: RiskState = initial_state("alice")
        self.now = START
        self.limits = Limits()
        self.commits: list[tuple[datetime, int]] = []
        self.open: dict[str, int] = {}
        self.transfers = 0

    @initialize(
        daily_minor=st.integers(1, 5_000),
        max_transfer_minor=st.none() | st.integers(1, 5_000),
        per_minute=st.none() | st.integers(1, 10),
        start_s=st.integers(0, 59),
    )
    def limits_and_start(
        self, daily_minor: int, max_transfer_minor: int | None, per_minute: int | None,
        start_s: int,
    ) -> None:
        self.limits = Limits(
            daily_outflow_minor=daily_minor, max_transfer_minor=max_transfer_minor,
            max_movements_per_minute=per_minute,
        )  # fmt: skip
        self.now = START + timedelta(seconds=start_s)

    @rule(target=exposures, amount_minor=st.integers(1, 3_000))
    def assess_a_movement(self, amount_minor: int) -> str:
        self.transfers += 1
        transfer_id = f"t-{self.transfers}"
        request = MovementRequest(transfer_id, "leg", amount_minor, "USD", PAYER, PAYEE)
        events = assess(self.state, request, self.limits, self.now)
        assert len(events) == 1
        if isinstance(events[0], ExposureReserved):
            self.open[transfer_id] = amount_minor
        else:
            assert isinstance(events[0], MovementRefused)
        self.state = fold(self.state, events)
        return transfer_id

    @rule(transfer_id=consumes(exposures))
    def commit_it(self, transfer_id: str) -> None:
        events = commit(self.state, transfer_id, "leg", self.now)
        amount_minor = self.open.pop(transfer_id, None)
        assert (amount_minor is None) == (events == [])
        if amount_minor is not None:
            self.commits.append((self.now, amount_minor))
        self.state = fold(self.state, events)

    @rule(transfer_id=consumes(exposures))
    def release_it(self, transfer_id: str) -> None:
        events = release(self.state, transfer_id, "leg", self.now)
        was_open = self.open.pop(transfer_id, None) is not None
        assert [type(e) for e in events] == [ExposureReleased if was_open else ExposureCancelled]
        self.state = fold(self.state, events)

    @rule(seconds=_STEPS_S)
    def time_passes(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)

    @invariant()
    def no_window_holds_more_than_the_daily_limit(self) -> None:
        limit = self.limits.daily_outflow_minor
        assert limit is not None
        for end, _ in self.commits:
            total = sum(a for at, a in self.commits if end - WINDOW < at <= end)
            assert total <= limit, f"{total} committed in the 24 hours up to {end}"

    @invariant()
    def open_exposures_match_the_model(self) -> None:
        assert {k.split(":")[0]: e.amount_minor for k, e in self.state.open_exposures.items()} \
            == self.open

    @invariant()
    def counted_outflow_never_understates_the_window(self) -> None:
        really = sum(a for at, a in self.commits if self.now - WINDOW < at <= self.now)
        assert self.state.outflow_minor(self.now) >= really


RiskAccount.TestCase.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
test_committed_outflow_never_exceeds_the_daily_limit = RiskAccount.TestCase
