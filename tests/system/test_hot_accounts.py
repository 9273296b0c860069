"""Many clients moving money between a few hot accounts at once converge to exact balances.

Every transfer touches two of four accounts, so the sagas of 32 concurrent clients contend
on the same account streams, risk streams and balances rows. Each client also sends each
request twice at once under one Idempotency-Key, as a client retrying a timeout would.
Once every transfer is final and every saga has ended, each balance must be exactly its
funding plus what completed transfers brought in minus what they took out: no update lost,
none applied twice, no hold left, money conserved, every read model equal to its rebuild.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
import uuid
from collections import Counter
from typing import Final

from tests.system.harness import USD, SystemUnderTest
from tests.system.invariants import check_quiescent, check_stores, expect, settle_all, wait_final
from tests.system.model import AccountModel, LedgerModel, LegModel, SettlementModel

HOT_ACCOUNTS: Final = 4
CLIENTS: Final = 32
TRANSFERS_PER_CLIENT: Final = 2
FUNDING_MINOR: Final = 100_00
MAX_AMOUNT_MINOR: Final = 60_00
"""Often more than a hot account has left: some transfers are refused, under contention."""


async def open_hot_accounts(system: SystemUnderTest, model: LedgerModel) -> list[str]:
    client, owner = system.http(), f"hot-{secrets.token_hex(4)}"
    ids = []
    for _ in range(HOT_ACCOUNTS):
        opened = expect(await client.post("/v1/accounts",
                                          json={"owner": owner, "currency": USD}), 201)
        account_id = opened["id"]
        model.accounts[account_id] = AccountModel(account_id, owner, USD)
        expect(await client.post(f"/v1/accounts/{account_id}/deposits",
                                 json={"amount": f"{FUNDING_MINOR / 100:.2f}"},
                                 headers={"Idempotency-Key": uuid.uuid4().hex}), 201)
        model.deposited(account_id, FUNDING_MINOR)
        ids.append(account_id)
    return ids


async def transfer_and_wait(system: SystemUnderTest, model: LedgerModel, ids: list[str],
                            rng: random.Random) -> str:  # fmt: skip
    """Request one transfer (the request sent twice at once, one key), wait for its end."""
    from_account, to_account = rng.sample(ids, 2)
    amount_minor = rng.randint(1, MAX_AMOUNT_MINOR)
    body = {"from_account": from_account, "to_account": to_account,
            "amount": f"{amount_minor // 100}.{amount_minor % 100:02d}", "currency": USD}
    headers = {"Idempotency-Key": uuid.uuid4().hex}
    client = system.http()
    first, second = await asyncio.gather(
        *(client.post("/v1/transfers", json=body, headers=headers) for _ in range(2))
    )
    accepted, again = expect(first, 202), expect(second, 202)
    assert again["id"] == accepted["id"], "one key, one transfer"
    legs = (LegModel(from_account, to_account, amount_minor, USD),)
    settlement = SettlementModel(accepted["id"], "transfer", legs, expected=None)
    model.settlements[settlement.settlement_id] = settlement
    final = await wait_final(client, settlement)
    model.settled(settlement.settlement_id, final["status"], final["reason"])
    return f"{final['status']} {final['reason'] or ''}".strip()


async def test_concurrent_clients_on_hot_accounts_converge_with_no_lost_update(
    system: SystemUnderTest,
) -> None:
    model = LedgerModel()
    ids = await open_hot_accounts(system, model)
    rng = random.Random(secrets.randbits(32))
    outcomes: Counter[str] = Counter()

    async def client_loop() -> None:
        for _ in range(TRANSFERS_PER_CLIENT):
            outcomes[await transfer_and_wait(system, model, ids, rng)] += 1

    started_s = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(CLIENTS):
            group.create_task(client_loop())
    elapsed_s = time.perf_counter() - started_s
    await settle_all(system, model)
    await check_quiescent(system, model)
    await check_stores(system)

    print(f"hot accounts: {CLIENTS} clients x {TRANSFERS_PER_CLIENT} transfers over"
          f" {HOT_ACCOUNTS} accounts in {elapsed_s:.1f} s"
          f" ({len(model.settlements) / elapsed_s:.1f} final/s): {dict(outcomes)};"
          f" balances {[model.accounts[i].balance_minor for i in ids]}")
    assert len(model.settlements) == CLIENTS * TRANSFERS_PER_CLIENT
    assert outcomes["completed"] > 0, outcomes
    assert set(outcomes) <= {"completed", "rejected insufficient_funds"}, outcomes
