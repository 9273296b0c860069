"""A stateful hypothesis test of the whole ledger, over HTTP and NATS.

Each example is a random program against the running system (one host for the package):
open accounts for a few owners of its own in two assets, deposit, withdraw, freeze and
unfreeze, set risk limits, request transfers and trades (valid ones and every kind of
invalid one), replay Idempotency-Keys, and restart the orchestrator or the whole host in
the middle of it all. Every program also settles a transfer over its payer's risk limit and a
trade its seller cannot deliver (risk approves both legs, the account service refuses the
reserve, so both exposures must be released); the first program of a run (and every
`STALL_EVERY`-th) settles a trade while another transaction holds its accounts' streams past
every attempt of its reserve, so the saga gives up on a reserve that lands afterwards, and
its void must end the holds of both legs. A model kept by the test says what each answer
may be and what each account must hold. After every step the balances must conserve money,
no account may be overdrawn and every account that no settlement in flight touches must
equal the model; at the end, once every saga has ended, every invariant of DESIGN section 3
is checked (`invariants.check_quiescent`), with what risk decided on each leg that moved.

    pytest tests/system                               # the `ci` profile: about a minute
    pytest tests/system --hypothesis-profile=long     # 200 programs of up to 50 steps
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Coroutine
from typing import Any, ClassVar, Final, TypeVar

import asyncpg
import httpx
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from account_service.repository import lock_streams
from tests.system.bodies import (
    AMOUNTS,
    INVALID_REQUESTS,
    REJECTED,
    Party,
    Sent,
    SettlementRequest,
    another_body,
    text_of,
    trade_request,
    transfer_request,
)
from tests.system.conftest import system_profile
from tests.system.harness import ACME, USD, SystemUnderTest
from tests.system.invariants import (
    check_quiescent,
    check_snapshot,
    check_stores,
    expect,
    minor,
    settle_all,
    wait_final,
    wait_saga_status,
)
from tests.system.model import (
    AccountModel,
    Expected,
    LedgerModel,
    SettlementModel,
)

T = TypeVar("T")
OWNERS: Final = 3
ACCOUNT_ACTIONS: Final = ["open", "deposit", "withdraw", "freeze or unfreeze", "set max transfer"]
MAX_FAULTS: Final = 2
"""Restarts per program: enough to hit sagas in flight, few enough to stay quick."""
STORE_CHECK_EVERY: Final = 25
"""Programs between two checks of whole stores (chains, read models against rebuilds)."""
STALL_EVERY: Final = 25
"""Programs between two stalled trades (the first program of a run has one): each waits
for every attempt of a reserve to time out, about 17 s."""
STALLED_QUANTITY: Final = 7
FUNDING_MINOR: Final = 50_000
TRADE_QUANTITIES: Final = st.one_of(st.integers(1, 40), st.integers(40_000, 60_000))
"""Mostly small; sometimes more than a seller holds (risk approves it, the account service
refuses the reserve, and both legs' exposures are released)."""


class LedgerMachine(RuleBasedStateMachine):
    """Random programs against the ledger, checked against `LedgerModel`."""

    system: SystemUnderTest  # set by the test before the machine runs
    tally: ClassVar[Counter[str]] = Counter()  # what the runs did, printed by the test

    def __init__(self) -> None:
        super().__init__()
        token = secrets.token_hex(4)
        self.owners = [f"sys-{token}-{index}" for index in range(OWNERS)]
        self.model = LedgerModel()
        self.sent: list[Sent] = []
        self.is_broken = False
        self.faults = 0
        self.trace: list[str] = []
        """What the program did and what the system answered, for a failure's message (a
        failure may not replay: the system's timing is not the test's to repeat)."""

    # --- plumbing ---------------------------------------------------------------------

    def do(self, work: Coroutine[Any, Any, T]) -> T:
        """Run `work` on the system's loop; remember a failure, so teardown does not bury
        it under a second one."""
        try:
            return self.system.run(work)
        except BaseException as error:
            if not self.is_broken:
                error.add_note("the program until the failure:\n  " + "\n  ".join(self.trace))
            self.is_broken = True
            raise

    def log(self, line: str) -> None:
        """Add a line to the program's trace."""
        self.trace.append(line)

    @property
    def client(self) -> httpx.AsyncClient:
        return self.system.http()

    def pick(self, data: st.DataObject, ids: list[str], label: str) -> str:
        return data.draw(st.sampled_from(ids), label=label)

    # --- accounts ---------------------------------------------------------------------

    @initialize(data=st.data())
    def open_fund_and_settle(self, data: st.DataObject) -> None:
        """Every program starts with funded accounts, one transfer and one trade, a transfer
        over a risk limit and a trade the seller cannot deliver (refused, so compensated);
        now and then, a trade whose reserve is stalled past its saga's retries."""
        program = LedgerMachine.tally["programs started"]
        LedgerMachine.tally["programs started"] += 1
        for index, currency in enumerate((USD, USD, USD, ACME, ACME)):
            account_id = self.open(index % OWNERS, currency, None)
            self.do(self._deposit(account_id, FUNDING_MINOR))
        self.do(self._settle([self.transfer_between_accounts(data)], is_waited=True))
        self.do(self._settle([self.trade_between_accounts(data)], is_waited=True))
        self.transfer_over_a_limit(data)
        self.trade_the_seller_cannot_deliver(data)
        if program % STALL_EVERY == 0:  # draws nothing: which program stalls is not data
            # Nor may it change what later rules draw from: the stalled trade and the
            # deposits funding it are not offered for replay, or a program replayed while
            # shrinking would draw from a list of another length (FlakyStrategyDefinition).
            offered = len(self.sent)
            self.trade_with_a_stalled_reserve()
            del self.sent[offered:]

    def transfer_over_a_limit(self, data: st.DataObject) -> None:
        """A per-movement limit on a payer (funded for more), and a transfer above it that
        risk must refuse: nothing moves, whatever the funds."""
        self.log("transfer over a limit")
        cash = self.model.ids_of(USD)
        payer, payee = self.model.accounts[cash[2]], cash[0]
        limit = data.draw(st.sampled_from([1_000, 20_000]), label="limit")
        amount_minor = data.draw(st.integers(limit + 1, limit + 10_000), label="over the limit")
        self.do(self._set_max_transfer(payer.account_id, limit))
        self.fund(payer.account_id, amount_minor)
        request = transfer_request(payer.account_id, payee, amount_minor, USD)
        self.do(self._settle([request], is_waited=True))
        settlement = list(self.model.settlements.values())[-1]
        assert (settlement.status, settlement.reason) == ("rejected", "limit_exceeded"), (
            f"a transfer of {amount_minor} minor units from {payer.account_id}, whose limit is"
            f" {limit}, ended {settlement.status} ({settlement.reason})"
        )

    def trade_the_seller_cannot_deliver(self, data: st.DataObject) -> None:
        """A trade risk approves on both payers (no limits) that the account service
        refuses: the seller holds less of the instrument than it sells."""
        self.log("trade the seller cannot deliver")
        cash, assets = self.model.ids_of(USD), self.model.ids_of(ACME)
        seller_asset = self.model.accounts[assets[1]]
        quantity = seller_asset.spendable_minor + data.draw(st.integers(1, 1_000), label="short by")
        request = trade_request(Party(cash[0], assets[0]), Party(cash[1], assets[1]), quantity, 1)
        self.do(self._settle([request], is_waited=True))
        settlement = list(self.model.settlements.values())[-1]
        assert (settlement.status, settlement.reason) == ("rejected", "insufficient_funds"), (
            f"a trade of {quantity} ACME from a seller holding {seller_asset.balance_minor}"
            f" ended {settlement.status} ({settlement.reason})"
        )

    def trade_with_a_stalled_reserve(self) -> None:
        """A fault: a valid trade while another transaction holds its accounts' streams,
        until its saga has given up on the reserve. The reserve then lands, placing every
        leg's holds, and the saga's void must end them all."""
        self.log("trade with a stalled reserve")
        LedgerMachine.tally["trades with a stalled reserve"] += 1
        self.do(settle_all(self.system, self.model))  # nothing else waits on those accounts
        cash, assets = self.model.ids_of(USD), self.model.ids_of(ACME)
        request = trade_request(Party(cash[0], assets[0]), Party(cash[1], assets[1]),
                                STALLED_QUANTITY, 100)  # fmt: skip
        for leg in request.legs:  # enough for the reserve to place every hold when it lands
            self.fund(leg.from_account, leg.amount_minor)
        self.do(self._stalled(request))

    async def _stalled(self, request: SettlementRequest) -> None:
        store = self.system.store("account")
        accounts = sorted({a for leg in request.legs for a in (leg.from_account, leg.to_account)})
        assert self.system.settings.database_url is not None, "the system has a database"
        connection = await asyncpg.connect(self.system.settings.database_url)
        try:
            # A writer holding the accounts' streams (the lock every account write queues on
            # first): it takes no transaction id, so it holds back no relay or subscription.
            async with connection.transaction():
                await lock_streams(store, connection, accounts)
                settlement = await self._request(request, None)
                saga = await wait_saga_status(self.client, settlement.settlement_id,
                                              "compensating")  # fmt: skip
                self.log(f"  {settlement.settlement_id} compensating: {saga['reason']}")
        finally:
            await connection.close()
        final = await wait_final(self.client, settlement)
        self.log(f"  {final['id']}: {final['status']} {final['reason'] or ''}")
        self.model.settled(settlement.settlement_id, final["status"], final["reason"])
        assert (final["status"], final["reason"]) == ("failed", "retries_exhausted"), (
            f"a trade whose reserve never answered in time ended {final['status']}"
            f" ({final['reason']}: {final['detail']}); steps {final['steps']}"
        )

    @rule(data=st.data(), action=st.sampled_from(ACCOUNT_ACTIONS))
    def change_an_account(self, data: st.DataObject, action: str) -> None:
        """Open, deposit, withdraw, freeze or unfreeze, or set a risk limit. (One rule for
        them all: hypothesis leaves some rules out of each program, and these are many.)"""
        LedgerMachine.tally[action] += 1
        self.log(action)
        if action == "open":
            owner = data.draw(st.integers(0, OWNERS - 1), label="owner")
            currency = data.draw(st.sampled_from([USD, ACME]), label="currency")
            self.open(owner, currency, data.draw(st.sampled_from([None, 0, 5_000]),
                                                 label="overdraft"))  # fmt: skip
            return
        account_id = self.pick(data, self.model.ids_of(), "account")
        if action == "deposit":
            self.do(self._deposit(account_id, data.draw(AMOUNTS, label="amount")))
        elif action == "withdraw":
            self.do(self._withdraw(account_id, data.draw(AMOUNTS, label="amount")))
        elif action == "freeze or unfreeze":
            is_frozen = not self.model.accounts[account_id].is_frozen
            self.do(self._set_frozen(account_id, is_frozen=is_frozen))
        else:
            limit = data.draw(st.sampled_from([None, 0, 1_000, 20_000]), label="max transfer")
            self.do(self._set_max_transfer(account_id, limit))

    def fund(self, account_id: str, amount_minor: int) -> None:
        """Deposit what the account lacks to pay `amount_minor` (no settlement in flight
        touches it)."""
        lacking = amount_minor - self.model.accounts[account_id].spendable_minor
        if lacking > 0:
            self.do(self._deposit(account_id, lacking))

    def open(self, owner: int, currency: str, overdraft_minor: int | None) -> str:
        body: dict[str, Any] = {"owner": self.owners[owner], "currency": currency}
        if overdraft_minor is not None:
            body["overdraft_limit"] = text_of(overdraft_minor, currency)
        key = uuid.uuid4().hex

        async def post() -> dict[str, Any]:
            response = await self.client.post("/v1/accounts", json=body,
                                              headers={"Idempotency-Key": key})  # fmt: skip
            return dict(expect(response, 201))

        opened = self.do(post())
        self.log(f"  opened {opened['id']} {currency} for {body['owner']}"
                 f" overdraft {overdraft_minor}")
        assert opened["status"] == "open", opened
        assert opened["balance"] == text_of(0, currency), opened
        self.sent.append(Sent("/v1/accounts", body, key, 201, opened))
        self.model.accounts[opened["id"]] = AccountModel(
            opened["id"], body["owner"], currency, overdraft_minor or 0
        )
        return str(opened["id"])

    async def _deposit(self, account_id: str, amount_minor: int) -> None:
        account = self.model.accounts[account_id]
        status, body = await self._move("deposits", account, amount_minor)
        if account.is_frozen:
            assert (status, body["code"]) == (409, "account_frozen"), body
            return
        assert status == 201, body
        self.model.deposited(account_id, amount_minor)

    async def _withdraw(self, account_id: str, amount_minor: int) -> None:
        account = self.model.accounts[account_id]
        status, body = await self._move("withdrawals", account, amount_minor)
        if account.is_frozen:
            assert (status, body["code"]) == (409, "account_frozen"), body
            return
        is_enough = amount_minor <= account.spendable_minor
        if self.model.is_busy(account_id):
            # A hold in flight may have taken some of it: either answer, followed below.
            assert status in (201, 409), body
        else:
            assert status == (201 if is_enough else 409), (body, account)
        if status == 409:
            assert body["code"] == "insufficient_funds", body
            return
        self.model.withdrawn(account_id, amount_minor)

    async def _move(self, kind: str, account: AccountModel, amount_minor: int
                    ) -> tuple[int, dict[str, Any]]:  # fmt: skip
        path = f"/v1/accounts/{account.account_id}/{kind}"
        body = {"amount": text_of(amount_minor, account.currency), "reference": kind}
        key = uuid.uuid4().hex
        response = await self.client.post(path, json=body, headers={"Idempotency-Key": key})
        answer: dict[str, Any] = response.json()
        self.log(f"  {kind} {body['amount']} {account.account_id}: {response.status_code}")
        if response.status_code in (201, 409):  # the answers kept under the key
            self.sent.append(Sent(path, body, key, response.status_code, answer))
        if response.status_code == 201:
            entry = answer["entry"]
            sign = 1 if kind == "deposits" else -1
            assert minor(entry["amount"], account.currency) == sign * amount_minor, answer
        return response.status_code, answer

    async def _set_frozen(self, account_id: str, *, is_frozen: bool) -> None:
        path = f"/v1/accounts/{account_id}/{'freeze' if is_frozen else 'unfreeze'}"
        body = expect(await self.client.post(path), 200)
        self.log(f"  {account_id} {body['status']}")
        assert body["status"] == ("frozen" if is_frozen else "open"), body
        self.model.accounts[account_id].is_frozen = is_frozen

    async def _set_max_transfer(self, account_id: str, limit_minor: int | None) -> None:
        account = self.model.accounts[account_id]
        limit = None if limit_minor is None else text_of(limit_minor, account.currency)
        path = f"/v1/risk/accounts/{account_id}/limits"
        async with asyncio.timeout(60):
            while True:  # risk learns of an account from its events, a moment after
                response = await self.client.put(path, json={"max_transfer": limit})
                if response.status_code != 404:
                    break
                assert response.json()["code"] == "unknown_account", response.text
                await asyncio.sleep(0.05)
        body = expect(response, 200)
        self.log(f"  {account_id} max transfer {limit}")
        assert body["limits"]["max_transfer"] == limit, body
        account.max_transfer_minor = limit_minor

    # --- transfers and trades ---------------------------------------------------------

    @rule(data=st.data(), kinds=st.lists(st.sampled_from(["transfer", "trade"]), min_size=1,
                                         max_size=4), is_waited=st.booleans())  # fmt: skip
    def transfers_and_trades(self, data: st.DataObject, kinds: list[str], is_waited: bool
                             ) -> None:  # fmt: skip
        """Request a few settlements at once (they may share accounts); wait for them or
        leave them in flight."""
        requests = [self.transfer_between_accounts(data) if kind == "transfer"
                    else self.trade_between_accounts(data) for kind in kinds]  # fmt: skip
        self.do(self._settle(requests, is_waited))

    @rule(data=st.data(), problem=st.one_of(st.sampled_from(sorted(REJECTED)),
                                            st.sampled_from(sorted(INVALID_REQUESTS))))
    def transfer_that_must_fail(self, data: st.DataObject, problem: str) -> None:
        """A transfer the ledger must refuse: at once (422, nothing created) when the trade
        service can tell, else after its saga (rejected: unknown account, wrong currency)."""
        LedgerMachine.tally[f"must fail: {problem}"] += 1
        self.log(f"must fail: {problem}")
        if problem in INVALID_REQUESTS:
            self.invalid_transfer(data, problem)
        else:
            self.transfer_that_must_be_rejected(data, problem)

    def transfer_that_must_be_rejected(self, data: st.DataObject, kind: str) -> None:
        known = self.pick(data, self.model.ids_of(), "known account")
        currency = self.model.accounts[known].currency
        other = str(uuid.uuid4())
        if kind == "currency mismatch":
            other = self.pick(data, self.model.ids_of(ACME if currency == USD else USD), "other")
        pair = (other, known) if kind == "unknown payer" else (known, other)
        amount_minor = data.draw(AMOUNTS, label="amount")
        request = transfer_request(*pair, amount_minor, currency)
        self.do(self._settle([request], is_waited=True))

    def transfer_between_accounts(self, data: st.DataObject) -> SettlementRequest:
        currency = data.draw(st.sampled_from([USD, ACME]), label="currency")
        ids = self.model.ids_of(currency)
        from_account = self.pick(data, ids, "from")
        to_account = self.pick(data, [i for i in ids if i != from_account], "to")
        amount_minor = data.draw(AMOUNTS, label="amount")
        return transfer_request(from_account, to_account, amount_minor, currency)

    def trade_between_accounts(self, data: st.DataObject) -> SettlementRequest:
        cash, assets = self.model.ids_of(USD), self.model.ids_of(ACME)
        buyer_cash = self.pick(data, cash, "buyer cash")
        seller_cash = self.pick(data, [i for i in cash if i != buyer_cash], "seller cash")
        seller_asset = self.pick(data, assets, "seller asset")
        buyer_asset = self.pick(data, [i for i in assets if i != seller_asset], "buyer asset")
        quantity = data.draw(TRADE_QUANTITIES, label="quantity")
        price_cents = data.draw(st.sampled_from([1, 100, 250, 1234]), label="price in cents")
        return trade_request(Party(buyer_cash, buyer_asset), Party(seller_cash, seller_asset),
                             quantity, price_cents)  # fmt: skip

    async def _settle(self, requests: list[SettlementRequest], is_waited: bool) -> None:
        """Send the requests at once, then (if waited) check each outcome against what the
        model predicted for it: only for one that shares no account with anything else in
        flight, since what it finds then is known."""
        expectations = []
        for index, request in enumerate(requests):
            others = [r.legs for r in requests[:index] + requests[index + 1:]]
            expectations.append(self.model.predict(request.legs, others) if is_waited else None)
        settlements = await asyncio.gather(*(self._request(r, e) for r, e in
                                             zip(requests, expectations, strict=True)))
        if not is_waited:
            return
        finals = await asyncio.gather(*(wait_final(self.client, s) for s in settlements))
        for final in finals:
            self.log(f"  {final['id']}: {final['status']} {final['reason'] or ''}")
        for request, settlement, final in zip(requests, settlements, finals, strict=True):
            LedgerMachine.tally[f"{request.kind} {final['status']} {final['reason'] or ''}"] += 1
            if settlement.expected is not None:
                LedgerMachine.tally["outcomes predicted"] += 1
                assert settlement.expected.allows(final["status"], final["reason"],
                                                  is_after_fault=self.faults > 0), (
                    f"{request.kind} {request.body} expected {settlement.expected}, got"
                    f" {final['status']} ({final['reason']}: {final['detail']});"
                    f" steps {final['steps']}"
                )
            self.model.settled(settlement.settlement_id, final["status"], final["reason"])

    async def _request(self, request: SettlementRequest, expected: Expected | None
                       ) -> SettlementModel:  # fmt: skip
        path, key = f"/v1/{request.kind}s", uuid.uuid4().hex
        response = await self.client.post(path, json=request.body,
                                          headers={"Idempotency-Key": key})  # fmt: skip
        answer = expect(response, 202)
        self.log(f"  {request.kind} {answer['id']}: {request.body}")
        assert answer["status"] == "pending", answer
        self.sent.append(Sent(path, request.body, key, 202, answer))
        settlement = SettlementModel(answer["id"], request.kind, request.legs, expected)
        self.model.settlements[settlement.settlement_id] = settlement
        return settlement

    def invalid_transfer(self, data: st.DataObject, problem: str) -> None:
        ids = self.model.ids_of(USD)
        from_account = self.pick(data, ids, "from")
        to_account = self.pick(data, [i for i in ids if i != from_account], "to")
        body: dict[str, Any] = {"from_account": from_account, "to_account": to_account,
                                "amount": "1.00", "currency": USD}  # fmt: skip
        change, codes = INVALID_REQUESTS[problem]
        body.update(change)
        if problem == "same account":
            body["to_account"] = from_account
        self.do(self._refused_transfer(body, codes, has_key=problem != "no key"))

    async def _refused_transfer(self, body: dict[str, Any], codes: frozenset[str],
                                *, has_key: bool) -> None:  # fmt: skip
        before = await self._transfer_count(body["from_account"])
        headers = {"Idempotency-Key": uuid.uuid4().hex} if has_key else {}
        response = await self.client.post("/v1/transfers", json=body, headers=headers)
        problem = expect(response, 422)
        assert response.headers["content-type"] == "application/problem+json", response.text
        assert problem["code"] in codes, problem
        assert await self._transfer_count(body["from_account"]) == before, "it created one"

    async def _transfer_count(self, account_id: str) -> int:
        page = expect(await self.client.get("/v1/transfers",
                                            params={"account": account_id, "limit": 500}), 200)
        return len(page["items"])

    @precondition(lambda self: bool(self.model.pending()))
    @rule()
    def wait_for_every_settlement(self) -> None:
        self.log("wait for every settlement")
        self.do(settle_all(self.system, self.model))

    # --- idempotency ------------------------------------------------------------------

    @precondition(lambda self: bool(self.sent))
    @rule(data=st.data(), is_same_body=st.booleans())
    def replay_an_idempotency_key(self, data: st.DataObject, is_same_body: bool) -> None:
        sent = data.draw(st.sampled_from(self.sent), label="request")
        self.do(self._replay(sent, is_same_body))

    async def _replay(self, sent: Sent, is_same_body: bool) -> None:
        self.log(f"replay {sent.path} ({'same' if is_same_body else 'another'} body)")
        body = dict(sent.body) if is_same_body else another_body(sent.body)
        response = await self.client.post(sent.path, json=body,
                                          headers={"Idempotency-Key": sent.key})  # fmt: skip
        if not is_same_body:
            problem = expect(response, 422)
            assert problem["code"] == "idempotency_key_reused", problem
            return
        assert response.status_code == sent.status, response.text
        assert response.json() == sent.answer, "a replay answers what the first request got"
        assert response.headers.get("Idempotent-Replayed") == "true", dict(response.headers)

    # --- faults -----------------------------------------------------------------------

    @precondition(lambda self: self.faults < MAX_FAULTS)
    @rule(fault=st.sampled_from(["orchestrator", "host"]))
    def restart(self, fault: str) -> None:
        """A light fault: the orchestrator's task cancelled mid-step and a new orchestrator
        started, or every service stopped and started again, sagas in flight or not."""
        self.faults += 1
        LedgerMachine.tally[f"restart {fault}"] += 1
        self.log(f"restart {fault}")
        if fault == "orchestrator":
            self.do(self.system.restart_orchestrator())
        else:
            self.do(self.system.restart_host())

    # --- invariants -------------------------------------------------------------------

    @invariant()
    def balances_conserve_and_match_the_model(self) -> None:
        self.do(check_snapshot(self.system, self.model))

    def teardown(self) -> None:
        if self.is_broken:
            return  # the failure is reported as it happened
        started_s = time.perf_counter()
        self.do(settle_all(self.system, self.model))
        settled_s = time.perf_counter()
        self.do(check_quiescent(self.system, self.model))
        LedgerMachine.tally["ms settling"] += round((settled_s - started_s) * 1000)
        LedgerMachine.tally["ms checking"] += round((time.perf_counter() - settled_s) * 1000)
        LedgerMachine.tally["programs checked at quiescence"] += 1
        if LedgerMachine.tally["programs checked at quiescence"] % STORE_CHECK_EVERY == 0:
            self.do(check_stores(self.system))
        for settlement in self.model.settlements.values():
            LedgerMachine.tally[f"{settlement.kind}s final"] += 1


async def test_the_ledger_keeps_every_invariant_under_random_programs(
    system: SystemUnderTest,
) -> None:
    LedgerMachine.system = system
    LedgerMachine.tally.clear()
    started_s = time.perf_counter()
    try:
        await asyncio.to_thread(run_state_machine_as_test, LedgerMachine,
                                settings=system_profile())  # fmt: skip
        await check_stores(system)
    finally:
        elapsed_s = time.perf_counter() - started_s
        print(f"ledger state machine: {elapsed_s:.1f} s, faults {system.restarts},"
              f" {dict(sorted(LedgerMachine.tally.items()))}")
