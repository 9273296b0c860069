"""Funded accounts and a bounded load of transfers over HTTP that remembers every 202."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Final

import httpx

from tests.faults.harness import Api

FUNDING: Final = {"USD": Decimal("1000.00"), "JPY": Decimal("100000")}
SCALES: Final = {"USD": 2, "JPY": 0}
MAX_IN_FLIGHT: Final = 16
"""Concurrent POSTs at most; the generator never queues more than this."""
OVERSIZED_EVERY: Final = 10
"""One transfer in this many asks for more than the payer ever had: a refusal after
risk approved it, so compensation runs under the fault too."""
_RISK_WAIT_S: Final = 30.0


@dataclass(frozen=True, slots=True)
class Accepted:
    """A transfer the API acknowledged with 202, as requested."""

    transfer_id: str
    from_account: str
    to_account: str
    amount: Decimal
    currency: str
    accepted_at_s: float
    """time.monotonic() when the 202 arrived."""


async def open_funded_accounts(api: Api, per_currency: int) -> dict[str, list[str]]:
    """Open `per_currency` accounts in each of FUNDING's currencies, fund them, and wait until
    risk knows each (else its transfers would wait for risk's view); their ids by currency."""
    accounts: dict[str, list[str]] = {currency: [] for currency in FUNDING}

    async def open_one(currency: str) -> None:
        response = await api.post("/v1/accounts", json={"owner": "faults", "currency": currency})
        assert response.status_code == 201, response.text
        account_id = response.json()["id"]
        response = await api.post(
            f"/v1/accounts/{account_id}/deposits", json={"amount": str(FUNDING[currency])},
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )  # fmt: skip
        assert response.status_code == 201, response.text
        accounts[currency].append(account_id)

    await asyncio.gather(*(open_one(c) for c in FUNDING for _ in range(per_currency)))
    await _wait_known_to_risk(api, [a for ids in accounts.values() for a in ids])
    return accounts


async def _wait_known_to_risk(api: Api, account_ids: list[str]) -> None:
    deadline_s = time.monotonic() + _RISK_WAIT_S
    unknown = list(account_ids)
    while unknown:
        answers = await asyncio.gather(*(api.get(f"/v1/risk/accounts/{a}") for a in unknown))
        unknown = [a for a, r in zip(unknown, answers, strict=True) if r.status_code != 200]
        assert time.monotonic() < deadline_s, f"risk never learned of {unknown}"
        if unknown:
            await asyncio.sleep(0.2)


@dataclass
class TransferLoad:
    """Submits transfers at `rate_per_s` (at most MAX_IN_FLIGHT at once) while `running`, until
    `max_accepted` were accepted or `max_requests` sent; `accepted` holds every 202, `answers`
    counts every status and transport error."""

    api: Api
    accounts: dict[str, list[str]]
    rng: random.Random
    rate_per_s: float
    max_accepted: int
    max_requests: int
    accepted: list[Accepted] = field(default_factory=list)
    answers: Counter[str] = field(default_factory=Counter)
    sent: int = 0

    @asynccontextmanager
    async def running(self) -> AsyncIterator[TransferLoad]:
        """Generate load in the background for the block (or until a bound is reached); after
        it, every request sent has its answer (or its error) recorded."""
        stopping = asyncio.Event()
        task = asyncio.create_task(self._generate(stopping))
        try:
            yield self
        finally:
            stopping.set()
            await task

    async def _generate(self, stopping: asyncio.Event) -> None:
        slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        interval_s = 1.0 / self.rate_per_s
        next_at_s = time.monotonic()
        async with asyncio.TaskGroup() as group:
            while not stopping.is_set() and self.sent < self.max_requests and (
                len(self.accepted) < self.max_accepted
            ):
                await slots.acquire()
                group.create_task(self._send_one(slots))
                self.sent += 1
                next_at_s += interval_s
                await asyncio.sleep(max(0.0, next_at_s - time.monotonic()))

    async def _send_one(self, slots: asyncio.Semaphore) -> None:
        try:
            currency = self.rng.choice(sorted(self.accounts))
            from_account, to_account = self.rng.sample(self.accounts[currency], 2)
            amount = self._amount(currency)
            try:
                response = await self.api.post(
                    "/v1/transfers",
                    json={"from_account": from_account, "to_account": to_account,
                          "amount": str(amount), "currency": currency},
                    headers={"Idempotency-Key": uuid.uuid4().hex},
                )  # fmt: skip
            except httpx.TransportError as error:
                self.answers[type(error).__name__] += 1
                return
            self.answers[str(response.status_code)] += 1
            if response.status_code == 202:
                self.accepted.append(Accepted(response.json()["id"], from_account, to_account,
                                              amount, currency, time.monotonic()))  # fmt: skip
        finally:
            slots.release()

    def _amount(self, currency: str) -> Decimal:
        scale = SCALES[currency]
        if self.sent % OVERSIZED_EVERY == OVERSIZED_EVERY - 1:
            return FUNDING[currency] * 50
        # Small next to the funding: most transfers settle, a few meet an emptied account.
        largest_minor = int(FUNDING[currency] * 10**scale) // 20
        return Decimal(self.rng.randint(1, largest_minor)).scaleb(-scale)
