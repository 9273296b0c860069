"""The story `ledger demo` tells a running ledger, over its HTTP API as any client would.

Three people open accounts (ada and bob in USD and BTC, cy in USD), ada and bob deposit,
then three transfers, a trade (ada buys 0.1 BTC from bob at 3,000 USD) and one transfer cy
cannot afford are requested at once; each is followed with `?wait=` until its saga has
settled it. Every run has its own owners (a random tag), so runs never meet.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

from ledger.cli.demo_client import LedgerClient, UnexpectedAnswer

ACCOUNTS: Final = (("ada", "USD"), ("bob", "USD"), ("cy", "USD"), ("ada", "BTC"), ("bob", "BTC"))
DEPOSITS: Final = (("ada", "USD", "1000.00"), ("bob", "USD", "250.00"),
                   ("bob", "BTC", "0.50000000"))  # fmt: skip
WAIT_S: Final = 30
"""Seconds one `?wait=` read holds (the API's maximum)."""
MAX_WAITS: Final = 4
"""Reads of one settlement before the demo gives up on it (about two minutes)."""
SAGA_LOOKS: Final = 50
SAGA_LOOK_PAUSE_S: Final = 0.1
"""A saga records its end a moment after the trade service learns it; look this often."""
SETTLED: Final = frozenset({"completed", "rejected", "failed", "requires_intervention"})


@dataclass(frozen=True, slots=True)
class Holder:
    """An account the demo opened: whose (`name`, e.g. "ada"), in which currency."""

    name: str
    currency: str
    account_id: str


@dataclass(frozen=True, slots=True)
class Request:
    """A transfer or trade the story asks for, and the outcome the story expects."""

    kind: str
    label: str
    expected: str
    body: dict[str, Any]


@dataclass(slots=True)
class Settled:
    """A request as it ended: the trade service's answer and the saga's own view (None when
    the token may not read sagas)."""

    request: Request
    settlement: dict[str, Any]
    saga: dict[str, Any] | None = None


@dataclass(slots=True)
class Report:
    """Everything the demo did and found."""

    tag: str
    holders: list[Holder] = field(default_factory=list)
    accounts: list[dict[str, Any]] = field(default_factory=list)
    settled: list[Settled] = field(default_factory=list)

    def deposited(self) -> dict[str, Decimal]:
        """What the story deposited, per currency."""
        totals: dict[str, Decimal] = {}
        for _, currency, amount in DEPOSITS:
            totals[currency] = totals.get(currency, Decimal(0)) + Decimal(amount)
        return totals

    def held(self) -> dict[str, Decimal]:
        """The posted balances of the story's accounts, per currency."""
        totals: dict[str, Decimal] = {}
        for account in self.accounts:
            currency = account["currency"]
            totals[currency] = totals.get(currency, Decimal(0)) + Decimal(account["balance"])
        return totals

    def surprises(self) -> list[str]:
        """Whatever did not go as the story expects (empty: all did)."""
        found = [f"{s.request.kind} {s.request.label} ended {s.settlement['status']},"
                 f" expected {s.request.expected}"
                 for s in self.settled if s.settlement["status"] != s.request.expected]  # fmt: skip
        deposited, held = self.deposited(), self.held()
        found += [f"{currency} balances add up to {held.get(currency, 0)}, deposited {amount}"
                  for currency, amount in deposited.items()
                  if held.get(currency) != amount]  # fmt: skip
        found += [f"account {a['id']} still has pending amounts" for a in self.accounts
                  if Decimal(a["pending_debits"]) or Decimal(a["pending_credits"])]  # fmt: skip
        return found


Say = Callable[[str], None]


async def tell(ledger: LedgerClient, say: Say) -> Report:
    """Run the story against `ledger`, saying what it does; raises LedgerUnreachable or
    UnexpectedAnswer when the ledger does not answer as its API promises."""
    await ledger.call("GET", "/health/ready")
    report = Report(tag=secrets.token_hex(3))
    say(f"opening {len(ACCOUNTS)} accounts for ada, bob and cy (owners end in -{report.tag})")
    report.holders = [await _open(ledger, report.tag, name, currency)
                      for name, currency in ACCOUNTS]  # fmt: skip
    holder = {(h.name, h.currency): h for h in report.holders}
    for name, currency, amount in DEPOSITS:
        say(f"{name} deposits {amount} {currency}")
        await ledger.call("POST", f"/v1/accounts/{holder[name, currency].account_id}/deposits",
                          body={"amount": amount}, key=f"demo-{report.tag}-deposit-{name}-"
                          f"{currency}", expect=(201,))  # fmt: skip
    requests = _requests(holder)
    say(f"requesting {len(requests)} transfers and trades at once, one of them unaffordable;"
        " their sagas settle them")  # fmt: skip
    ids = [await _request(ledger, report.tag, index, request)
           for index, request in enumerate(requests)]  # fmt: skip
    report.settled = list(await asyncio.gather(
        *(_settled(ledger, request, settlement_id) for request, settlement_id in zip(
            requests, ids, strict=True))
    ))  # fmt: skip
    report.accounts = [await ledger.call("GET", f"/v1/accounts/{h.account_id}")
                       for h in report.holders]  # fmt: skip
    return report


def _requests(holder: dict[tuple[str, str], Holder]) -> list[Request]:
    def usd(name: str) -> str:
        return holder[name, "USD"].account_id

    def transfer(payer: str, payee: str, amount: str, expected: str) -> Request:
        body = {"from_account": usd(payer), "to_account": usd(payee), "amount": amount,
                "currency": "USD", "reference": f"demo: {payer} pays {payee}"}  # fmt: skip
        return Request("transfer", f"{payer} → {payee} {amount} USD", expected, body)

    trade = {
        "instrument": "BTC", "quantity": "0.1", "price": "3000.00", "currency": "USD",
        "buyer": {"cash_account": usd("ada"), "asset_account": holder["ada", "BTC"].account_id},
        "seller": {"cash_account": usd("bob"), "asset_account": holder["bob", "BTC"].account_id},
    }  # fmt: skip
    return [
        transfer("ada", "bob", "120.00", "completed"),
        transfer("bob", "cy", "75.50", "completed"),
        transfer("ada", "cy", "30.00", "completed"),
        Request("trade", "ada buys 0.1 BTC from bob at 3000.00 USD", "completed", trade),
        transfer("cy", "ada", "500.00", "rejected"),
    ]


async def _open(ledger: LedgerClient, tag: str, name: str, currency: str) -> Holder:
    body = {"owner": f"{name}-{tag}", "currency": currency}
    account = await ledger.call("POST", "/v1/accounts", body=body,
                                key=f"demo-{tag}-open-{name}-{currency}", expect=(201,))
    return Holder(name, currency, account["id"])


async def _request(ledger: LedgerClient, tag: str, index: int, request: Request) -> str:
    answer = await ledger.call("POST", f"/v1/{request.kind}s", body=request.body,
                               key=f"demo-{tag}-{request.kind}-{index}", expect=(202,))  # fmt: skip
    settlement_id: str = answer["id"]
    return settlement_id


async def _settled(ledger: LedgerClient, request: Request, settlement_id: str) -> Settled:
    """The settlement once final (or as it stands after MAX_WAITS reads), with its saga."""
    path = f"/v1/{request.kind}s/{settlement_id}"
    settlement = await ledger.call("GET", path, params={"wait": WAIT_S})
    for _ in range(MAX_WAITS - 1):
        if settlement["status"] != "pending":
            break
        settlement = await ledger.call("GET", path, params={"wait": WAIT_S})
    return Settled(request, settlement, await _saga(ledger, settlement_id))


async def _saga(ledger: LedgerClient, saga_id: str) -> dict[str, Any] | None:
    """The saga once it has recorded its end (a moment after the trade service knows it)."""
    saga: dict[str, Any] | None = None
    for _ in range(SAGA_LOOKS):
        try:
            saga = await ledger.call("GET", f"/v1/sagas/{saga_id}")
        except UnexpectedAnswer as error:
            if error.status_code in (401, 403):
                return None  # this token may move money but not read the saga's log
            raise
        if saga["status"] in SETTLED:
            break
        await asyncio.sleep(SAGA_LOOK_PAUSE_S)
    return saga
