"""The settle-legs saga against the real account and risk services over real NATS and
PostgreSQL, with a small trade service answering complete, reject and fail.

Every participant serves under a name unique to this module (the command subjects are
shared by whoever uses the NATS server), and the starter follows a subject unique to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import asyncpg
import httpx
import nats
import orjson
import pytest
from nats.aio.msg import Msg

from eventstore import EventStore, UnitOfWork
from ledger import context
from ledger.commands import CommandClient, CommandNotReady, CommandRefused, CommandService
from ledger.host import Service, ServiceHost, running
from ledger.http import create_app
from ledger.settings import Settings
from risk_service.contracts import Assess, Decision, Movement
from saga import Orchestrator, Participants, SagaService
from saga.clock import DatabaseClock
from saga.contracts import SagaEvent
from saga.decisions import Action, Send
from saga.state import SagaState
from tests.integration.authorized import authorized_client
from tests.integration.json_logs import json_lines
from tests.integration.renamed_services import RenamedAccount, RenamedRisk
from trade_service.contracts import (
    CompleteSettlement,
    FailSettlement,
    RejectSettlement,
    SettlementLeg,
    SettlementOutcome,
    SettlementStatus,
    TransferRequested,
)

TOKEN = secrets.token_hex(4)
PARTICIPANTS = Participants(account=f"account-{TOKEN}", risk=f"risk-{TOKEN}",
                            trade=f"trade-{TOKEN}")  # fmt: skip
STARTING_PREFIX = f"ledger.t{TOKEN}trade"
FINAL = {"completed", "rejected", "failed"}


class Trade:
    """A stand-in trade service: records what the saga told it; may hang, refuse, or fail
    a number of times before it answers."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str, uuid.UUID]] = []
        self.hang: set[str] = set()
        self.refuse: set[str] = set()
        self.failures_left: dict[str, int] = {}
        self.released = asyncio.Event()

    def register(self, service: CommandService) -> None:
        async def answer(name: str, transfer_id: str, command_id: uuid.UUID,
                         status: SettlementStatus) -> SettlementOutcome:  # fmt: skip
            self.received.append((name, transfer_id, command_id))
            if transfer_id in self.hang:
                await self.released.wait()
            if transfer_id in self.refuse:
                raise CommandRefused("not_now", "the trade service refuses for the test")
            if self.failures_left.get(transfer_id, 0) > 0:
                self.failures_left[transfer_id] -= 1
                raise CommandNotReady("the trade service fails for the test")
            return SettlementOutcome(transfer_id=transfer_id, status=status)

        @service.command("complete", CompleteSettlement, SettlementOutcome)
        async def complete(command: CompleteSettlement, _: UnitOfWork) -> SettlementOutcome:
            return await answer("complete", command.transfer_id, command.command_id,
                                SettlementStatus.COMPLETED)  # fmt: skip

        @service.command("reject", RejectSettlement, SettlementOutcome)
        async def reject(command: RejectSettlement, _: UnitOfWork) -> SettlementOutcome:
            return await answer("reject", command.transfer_id, command.command_id,
                                SettlementStatus.REJECTED)  # fmt: skip

        @service.command("fail", FailSettlement, SettlementOutcome)
        async def fail(command: FailSettlement, _: UnitOfWork) -> SettlementOutcome:
            return await answer("fail", command.transfer_id, command.command_id,
                                SettlementStatus.FAILED)  # fmt: skip

    def told(self, transfer_id: str) -> list[str]:
        return [name for name, tid, _ in self.received if tid == transfer_id]


@pytest.fixture(scope="module")
async def settings(database_url: str, nats_url: str) -> Settings:
    return Settings(
        database_url=database_url, nats_url=nats_url, schema_prefix=f"t{TOKEN}_",
        saga_step_timeout_s=1.0, saga_step_max_attempts=3, saga_backoff_first_s=0.05,
        saga_backoff_max_s=0.2, saga_lease_s=3.0, saga_poll_interval_s=0.05,
    )  # fmt: skip


@pytest.fixture(scope="module")
async def host(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[ServiceHost]:
    services: list[Service] = [RenamedAccount(PARTICIPANTS.account), RenamedRisk(PARTICIPANTS.risk),
                SagaService(PARTICIPANTS, starting_subject=f"{STARTING_PREFIX}.>",
                            is_advancing=False)]  # fmt: skip
    async with running(ServiceHost(settings, services)) as started:
        yield started
    for name in ("account", "risk", "saga"):
        await pool.execute(f"drop schema if exists {settings.schema_for(name)} cascade")
    connection = await nats.connect(settings.nats_servers)
    try:
        for durable in (f"{settings.schema_for('risk')}-accounts",
                        f"{settings.schema_for('saga')}-starter"):  # fmt: skip
            with contextlib.suppress(Exception):
                await connection.jetstream().delete_consumer(settings.events_stream, durable)
    finally:
        await connection.close()


@pytest.fixture(scope="module")
async def trade(host: ServiceHost, pool: asyncpg.Pool) -> AsyncIterator[Trade]:
    schema = f"t{TOKEN}_trade_stub"
    store = EventStore(pool, schema)
    await store.migrate()
    stub = Trade()
    assert host.nc is not None
    service = CommandService(host.nc, store, name=PARTICIPANTS.trade, version="0.1.0",
                             stop_grace_s=0.1)  # fmt: skip
    stub.register(service)
    await service.start()
    yield stub
    stub.released.set()
    await service.stop()
    await pool.execute(f"drop schema if exists {schema} cascade")


@pytest.fixture(scope="module")
async def client(host: ServiceHost) -> AsyncIterator[httpx.AsyncClient]:
    async with authorized_client(create_app(host, manage_host=False)) as created:
        yield created


@contextlib.asynccontextmanager
async def orchestrators(
    host: ServiceHost, count: int = 1, settings: Settings | None = None
) -> AsyncIterator[list[Orchestrator]]:
    runtime = host.runtimes["saga"]
    settings = settings or runtime.settings
    made = [Orchestrator(runtime.store, runtime.nc, settings, participants=PARTICIPANTS)
            for _ in range(count)]  # fmt: skip
    tasks = [asyncio.create_task(o.run()) for o in made]
    try:
        yield made
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def funded_account(client: httpx.AsyncClient, amount: str | None) -> str:
    response = await client.post("/v1/accounts", json={"owner": "o-1", "currency": "USD"})
    assert response.status_code == 201, response.text
    account_id: str = response.json()["id"]
    if amount is not None:
        deposit = await client.post(f"/v1/accounts/{account_id}/deposits",
                                    json={"amount": amount},
                                    headers={"Idempotency-Key": str(uuid.uuid4())})  # fmt: skip
        assert deposit.status_code == 201, deposit.text
    return account_id


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = 30) -> None:
    """Wait until `check()` holds (it is polled: what it watches lives in other services)."""
    async with asyncio.timeout(timeout_s):
        while True:
            if await check():
                return
            await asyncio.sleep(0.05)


async def known_to_risk(client: httpx.AsyncClient, *account_ids: str) -> None:
    for account_id in account_ids:
        url = f"/v1/risk/accounts/{account_id}"
        await until(functools.partial(_answers, client, url))


async def _answers(client: httpx.AsyncClient, url: str) -> bool:
    return (await client.get(url)).status_code == 200


async def account(client: httpx.AsyncClient, account_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/accounts/{account_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def settled(client: httpx.AsyncClient, saga_id: str, timeout_s: float = 30) -> dict[str, Any]:
    async with asyncio.timeout(timeout_s):
        while True:
            response = await client.get(f"/v1/sagas/{saga_id}")
            if response.status_code == 200 and response.json()["status"] in FINAL | {
                "requires_intervention"
            }:
                body: dict[str, Any] = response.json()
                return body
            await asyncio.sleep(0.05)


async def _is_told(trade: Trade, transfer_id: str) -> bool:
    return bool(trade.told(transfer_id))


async def _is_final(client: httpx.AsyncClient, saga_id: str) -> bool:
    return (await settled(client, saga_id))["status"] in FINAL


def transfer(payer: str, payee: str, amount_minor: int) -> TransferRequested:
    transfer_id = f"tr-{uuid.uuid4().hex[:12]}"
    leg = SettlementLeg(leg_id="leg-1", from_account=payer, to_account=payee,
                        amount_minor=amount_minor, currency="USD")  # fmt: skip
    return TransferRequested(transfer_id=transfer_id, legs=(leg,), requested_at=datetime.now(UTC))


async def start(
    host: ServiceHost, request: TransferRequested, settings: Settings | None = None
) -> bool:
    runtime = host.runtimes["saga"]
    return await Orchestrator(runtime.store, runtime.nc, settings or runtime.settings).start(
        request
    )


@contextlib.asynccontextmanager
async def stream_locked(pool: asyncpg.Pool, schema: str, stream_id: str) -> AsyncIterator[None]:
    """Hold the event store's lock of one stream, as a slow writer of it would: a participant
    batch that needs the stream waits until the block ends."""
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute(
            "select pg_advisory_xact_lock(hashtext($1), hashtext($2))", schema, stream_id
        )
        yield


async def _status_in(client: httpx.AsyncClient, saga_id: str, statuses: set[str]) -> bool:
    response = await client.get(f"/v1/sagas/{saga_id}")
    return response.status_code == 200 and response.json()["status"] in statuses


async def test_a_funded_transfer_completes_and_moves_the_money(
    host: ServiceHost, client: httpx.AsyncClient, trade: Trade
) -> None:
    payer, payee = await funded_account(client, "10.00"), await funded_account(client, None)
    await known_to_risk(client, payer, payee)
    request = transfer(payer, payee, 250)

    assert await start(host, request)
    async with orchestrators(host):
        saga = await settled(client, request.transfer_id)

    assert saga["status"] == "completed", saga
    assert [s["step"] for s in saga["steps"]] == ["assess", "reserve", "post", "commit",
                                                 "complete"]  # fmt: skip
    assert (await account(client, payer))["balance"] == "7.50"
    assert (await account(client, payee))["balance"] == "2.50"
    assert (await account(client, payer))["pending_debits"] == "0.00"
    assert trade.told(request.transfer_id) == ["complete"]
    risk = (await client.get(f"/v1/risk/accounts/{payer}")).json()
    assert risk["open_exposure"] == "0.00"


async def test_one_transfer_is_one_chain_of_causes_across_the_services(
    host: ServiceHost, client: httpx.AsyncClient, trade: Trade, settings: Settings,
    pool: asyncpg.Pool,
) -> None:
    # SagaStarted -> StepStarted -> its command (and the participant's events) -> the reply
    # -> the recorded outcome, under one correlation and one trace.
    payer, payee = await funded_account(client, "10.00"), await funded_account(client, None)
    await known_to_risk(client, payer, payee)
    request = transfer(payer, payee, 250)
    requested = context.new_context(actor="teller-7").caused_by(str(uuid.uuid4()))
    ours = functools.partial(_is_ours, requested)
    assert host.nc is not None
    commands: list[Msg] = []
    replies: list[Msg] = []
    watching = [await host.nc.subscribe(f"{name}.*", cb=_keeper(commands))
                for name in (PARTICIPANTS.risk, PARTICIPANTS.account, PARTICIPANTS.trade)]
    watching.append(await host.nc.subscribe("_INBOX.>", cb=_keeper(replies)))  # fmt: skip

    with context.bound(requested):
        assert await start(host, request)
    async with orchestrators(host):
        saga = await settled(client, request.transfer_id)
    await until(lambda: _are_all_answered(list(filter(ours, commands)),
                                          list(filter(ours, replies))))  # fmt: skip
    for subscription in watching:
        await subscription.unsubscribe()

    assert saga["status"] == "completed", saga
    log = await host.runtimes["saga"].store.read_stream(f"saga-{request.transfer_id}")
    started, announcements = log[0], [e for e in log if e.event_type == "StepStarted"]
    assert started.metadata["causation_id"] == requested.causation_id
    assert {e.metadata["causation_id"] for e in announcements} == {str(started.event_id)}
    announced = {str(e.event_id): e.data["command_id"] for e in announcements}
    sent = {orjson.loads(m.data)["command_id"]: m.headers for m in filter(ours, commands)}
    assert len(sent) == 5
    for command_id, headers in sent.items():
        assert headers is not None
        assert announced[headers[context.CAUSATION_HEADER]] == command_id
    answered = {(m.headers or {}).get(context.CAUSATION_HEADER) for m in filter(ours, replies)}
    assert answered == set(sent)
    in_flight = None
    for event in log:
        if event.event_type == "StepStarted":
            in_flight = event.data["command_id"]
        elif event.event_type in {"StepSucceeded", "StepRefused", "StepFailed"}:
            assert event.metadata["causation_id"] == in_flight, event
    effects = [row for name in ("account", "risk") for row in await pool.fetch(
        f"select metadata from {settings.schema_for(name)}.events"
        " where metadata->>'correlation_id' = $1", requested.correlation_id)]  # fmt: skip
    assert effects
    assert {orjson.loads(row["metadata"])["causation_id"] for row in effects} <= set(sent)
    traceparents = [
        *(e.metadata["traceparent"] for e in log),
        *(orjson.loads(row["metadata"])["traceparent"] for row in effects),
        *((m.headers or {})[context.TRACEPARENT_HEADER] for m in filter(ours, commands)),
        *((m.headers or {})[context.TRACEPARENT_HEADER] for m in filter(ours, replies)),
    ]
    assert {traceparent.split("-")[1] for traceparent in traceparents} == {requested.trace_id}


def _keeper(kept: list[Msg]) -> Callable[[Msg], Awaitable[None]]:
    async def keep(message: Msg) -> None:
        kept.append(message)

    return keep


async def _has_heard(kept: list[Msg], count: int) -> bool:
    return len(kept) >= count


def _is_ours(sender: context.RequestContext, message: Msg) -> bool:
    return (message.headers or {}).get(context.CORRELATION_HEADER) == sender.correlation_id


async def _are_all_answered(commands: list[Msg], replies: list[Msg]) -> bool:
    return len(replies) >= len(commands)


async def test_risk_weighs_a_transfer_at_its_amount(
    host: ServiceHost, client: httpx.AsyncClient, trade: Trade
) -> None:
    payer, payee = await funded_account(client, "10.00"), await funded_account(client, None)
    await known_to_risk(client, payer, payee)
    limited = await client.put(f"/v1/risk/accounts/{payer}/limits",
                               json={"max_transfer": "3.00"})  # fmt: skip
    assert limited.status_code == 200, limited.text
    over, within = transfer(payer, payee, 301), transfer(payer, payee, 250)

    await start(host, over)
    await start(host, within)
    async with orchestrators(host):
        refused = await settled(client, over.transfer_id)
        completed = await settled(client, within.transfer_id)

    assert (refused["status"], refused["reason"]) == ("rejected", "limit_exceeded"), refused
    assert completed["status"] == "completed", completed
    assert (await account(client, payer))["balance"] == "7.50"
    assert (await account(client, payee))["balance"] == "2.50"
    risk = (await client.get(f"/v1/risk/accounts/{payer}")).json()
    assert (risk["open_exposure"], risk["outflow_24h"]) == ("0.00", "2.50")


async def test_a_second_start_of_the_same_transfer_is_a_no_op(
    host: ServiceHost, client: httpx.AsyncClient
) -> None:
    request = transfer("acc-x", "acc-y", 1)

    assert await start(host, request)
    assert not await start(host, request)
    assert (await client.get(f"/v1/sagas/{request.transfer_id}")).json()["version"] == 1


async def test_insufficient_funds_reject_and_leave_no_hold_nor_exposure(
    host: ServiceHost, client: httpx.AsyncClient, trade: Trade
) -> None:
    payer, payee = await funded_account(client, "1.00"), await funded_account(client, None)
    await known_to_risk(client, payer, payee)
    request = transfer(payer, payee, 500)

    await start(host, request)
    async with orchestrators(host):
        saga = await settled(client, request.transfer_id)

    assert saga["status"] == "rejected", saga
    assert saga["reason"] == "insufficient_funds"
    payer_now = await account(client, payer)
    assert (payer_now["balance"], payer_now["pending_debits"]) == ("1.00", "0.00")
    assert (await account(client, payee))["pending_credits"] == "0.00"
    assert (await client.get(f"/v1/risk/accounts/{payer}")).json()["open_exposure"] == "0.00"
    assert trade.told(request.transfer_id) == ["reject"]


async def test_a_saga_stopped_mid_step_is_finished_by_another_orchestrator(
    host: ServiceHost, client: httpx.AsyncClient, trade: Trade
) -> None:
    payer, payee = await funded_account(client, "5.00"), await funded_account(client, None)
    await known_to_risk(client, payer, payee)
    request = transfer(payer, payee, 100)
    trade.hang.add(request.transfer_id)
    await start(host, request)
    assert host.nc is not None
    sent: list[Msg] = []
    watching = await host.nc.subscribe(f"{PARTICIPANTS.trade}.complete", cb=_keeper(sent))

    async with orchestrators(host):  # it posts, then waits on the trade service...
        await until(lambda: _is_told(trade, request.transfer_id))
    # ...and is gone: "complete" is recorded as sent, its outcome is not.
    trade.hang.discard(request.transfer_id)
    async with orchestrators(host):
        saga = await settled(client, request.transfer_id)
    await until(lambda: _has_heard(sent, 2))  # the send and the resend
    await watching.unsubscribe()

    assert saga["status"] == "completed", saga
    assert (await account(client, payer))["balance"] == "4.00"
    assert (await account(client, payee))["balance"] == "1.00"
    completes = {cid for name, tid, cid in trade.received if tid == request.transfer_id}
    assert len(completes) == 1, "the resend carried the same command id"
    log = await host.runtimes["saga"].store.read_stream(f"saga-{request.transfer_id}")
    [announced] = [e for e in log if e.event_type == "StepStarted" and e.data["step"] == "complete"]
    causes = {(m.headers or {}).get(context.CAUSATION_HEADER) for m in sent
              if orjson.loads(m.data)["command_id"] == announced.data["command_id"]}  # fmt: skip
    assert causes == {str(announced.event_id)}, "the resend names the same StepStarted"


async def test_two_orchestrators_never_apply_a_saga_twice(
    host: ServiceHost, client: httpx.AsyncClient, trade: Trade
) -> None:
    payer, payee = await funded_account(client, "100.00"), await funded_account(client, None)
    await known_to_risk(client, payer, payee)
    requests = [transfer(payer, payee, 100 * (index + 1)) for index in range(8)]
    for request in requests:
        await start(host, request)

    async with orchestrators(host, count=3):
        sagas = [await settled(client, r.transfer_id) for r in requests]

    assert all(saga["status"] == "completed" for saga in sagas), sagas
    for saga in sagas:
        succeeded = [s["step"] for s in saga["steps"] if s["outcome"] == "succeeded"]
        assert succeeded == ["assess", "reserve", "post", "commit", "complete"]
    moved_minor = sum(100 * (index + 1) for index in range(8))
    assert (await account(client, payer))["balance"] == f"{(10_000 - moved_minor) / 100:.2f}"
    assert (await account(client, payee))["balance"] == f"{moved_minor / 100:.2f}"


async def test_a_parked_saga_is_listed_and_finished_by_an_operator_retry(
    host: ServiceHost, client: httpx.AsyncClient, trade: Trade
) -> None:
    payer, payee = await funded_account(client, None), await funded_account(client, None)
    await known_to_risk(client, payer, payee)
    request = transfer(payer, payee, 100)
    trade.refuse.add(request.transfer_id)
    await start(host, request)

    async with orchestrators(host):
        parked = await settled(client, request.transfer_id)
        listed = (await client.get("/v1/sagas", params={"status": "requires_intervention"}))
        trade.refuse.discard(request.transfer_id)
        retried = await client.post(f"/v1/sagas/{request.transfer_id}/retry")
        assert retried.status_code == 200, retried.text
        await until(lambda: _is_final(client, request.transfer_id))
        saga = await settled(client, request.transfer_id)

    assert parked["status"] == "requires_intervention"
    assert "not_now" in parked["last_error"]
    assert request.transfer_id in [item["saga_id"] for item in listed.json()["items"]]
    assert saga["status"] == "rejected"
    again = await client.post(f"/v1/sagas/{request.transfer_id}/retry")
    assert again.status_code == 409
    assert again.json()["code"] == "not_parked"


async def test_a_saga_whose_step_failed_before_succeeding_is_listed_without_the_error(
    host: ServiceHost, client: httpx.AsyncClient, trade: Trade
) -> None:
    payer, payee = await funded_account(client, "5.00"), await funded_account(client, None)
    await known_to_risk(client, payer, payee)
    request = transfer(payer, payee, 100)
    trade.failures_left[request.transfer_id] = 2  # "complete" (past the pivot) fails twice
    await start(host, request)

    async with orchestrators(host):
        saga = await settled(client, request.transfer_id)
    listed = (await client.get("/v1/sagas", params={"status": "completed", "limit": 500}))

    assert saga["status"] == "completed", saga
    assert [s["outcome"] for s in saga["steps"] if s["step"] == "complete"] == [
        "failed", "failed", "succeeded"]
    summary = next(item for item in listed.json()["items"]
                   if item["saga_id"] == request.transfer_id)  # fmt: skip
    assert saga["last_error"] is None
    assert summary["last_error"] == saga["last_error"]


async def test_an_unknown_saga_is_a_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/sagas/nope-1")

    assert response.status_code == 404


async def test_a_transfer_requested_on_jetstream_starts_its_saga_once(
    host: ServiceHost, client: httpx.AsyncClient
) -> None:
    request = transfer("acc-a", "acc-b", 1)
    assert host.nc is not None
    js = host.nc.jetstream()
    for _ in range(2):  # the same request twice, as two distinct events
        event_id = str(uuid.uuid4())
        body = {
            "event_id": event_id, "stream_id": f"transfer-{request.transfer_id}",
            "stream_version": 1, "event_type": "TransferRequested",
            "data": request.model_dump(mode="json"), "metadata": {},
            "recorded_at": datetime.now(UTC).isoformat(), "global_position": 1,
        }  # fmt: skip
        await js.publish(f"{STARTING_PREFIX}.transfer.TransferRequested", orjson.dumps(body),
                         headers={"Nats-Msg-Id": event_id})  # fmt: skip
    await js.publish(f"{STARTING_PREFIX}.transfer.SettlementCompleted", b"{}")

    await until(lambda: _answers(client, f"/v1/sagas/{request.transfer_id}"))
    await asyncio.sleep(0.5)
    saga = (await client.get(f"/v1/sagas/{request.transfer_id}")).json()
    assert saga["version"] == 1
    assert saga["kind"] == "transfer"


class _FailsOnce(Orchestrator):
    """An orchestrator whose first turn on each saga fails unexpectedly (a transient error)."""

    failed: ClassVar[set[str]] = set()

    async def _advance(self, saga_id: str) -> Action:
        if saga_id not in self.failed:
            self.failed.add(saga_id)
            raise RuntimeError("the store went away for a moment")
        return await super()._advance(saga_id)


async def test_a_turn_that_fails_unexpectedly_is_retried_after_the_first_backoff_not_the_max(
    host: ServiceHost, client: httpx.AsyncClient, trade: Trade, pool: asyncpg.Pool
) -> None:
    payer, payee = await funded_account(client, "3.00"), await funded_account(client, None)
    await known_to_risk(client, payer, payee)
    request = transfer(payer, payee, 100)
    await start(host, request)
    runtime = host.runtimes["saga"]
    settings = runtime.settings.model_copy(update={"saga_backoff_max_s": 600.0})
    orchestrator = _FailsOnce(runtime.store, runtime.nc, settings, participants=PARTICIPANTS)
    runs = f"{settings.schema_for('saga')}.saga_runs"

    failed_at = datetime.now(UTC)
    while request.transfer_id not in orchestrator.failed:  # other tests' sagas may be due too
        await orchestrator.run_once()
    # Released with its lease held off until then: no worker claims it before.
    retry_at = await pool.fetchval(f"select lease_until from {runs} where saga_id = $1",
                                   request.transfer_id)  # fmt: skip
    pause_s = (retry_at - failed_at).total_seconds()
    assert 0 < pause_s <= settings.saga_backoff_first_s + 1.0, "not saga_backoff_max_s (600 s)"
    await asyncio.sleep((retry_at - datetime.now(UTC)).total_seconds())
    async with orchestrators(host):
        saga = await settled(client, request.transfer_id)

    assert saga["status"] == "completed", saga
    assert (await account(client, payee))["balance"] == "1.00"


class _FailsMidTurn(Orchestrator):
    """An orchestrator whose first send on each saga fails unexpectedly, its step recorded."""

    failed: ClassVar[set[str]] = set()

    async def _perform(self, state: SagaState, send: Send) -> tuple[SagaEvent, ...]:
        if state.saga_id not in self.failed:
            self.failed.add(state.saga_id)
            raise RuntimeError("NATS went away mid-step")
        return await super()._perform(state, send)


async def test_a_failed_turn_is_logged_with_the_sagas_correlation_and_trace(
    host: ServiceHost, client: httpx.AsyncClient, trade: Trade
) -> None:
    payer, payee = await funded_account(client, "3.00"), await funded_account(client, None)
    await known_to_risk(client, payer, payee)
    request = transfer(payer, payee, 100)
    requested = context.new_context(actor="teller-7")
    with context.bound(requested):
        await start(host, request)
    runtime = host.runtimes["saga"]
    orchestrator = _FailsMidTurn(runtime.store, runtime.nc, runtime.settings,
                                 participants=PARTICIPANTS)  # fmt: skip
    with json_lines("saga.orchestrator") as logs:
        while request.transfer_id not in orchestrator.failed:  # other tests' sagas may be due
            await orchestrator.run_once()

    [failure] = [line for line in logs
                 if line["message"].startswith(f"advancing saga {request.transfer_id} failed")]
    assert "RuntimeError: NATS went away mid-step" in failure["exception"]
    assert failure["correlation_id"] == requested.correlation_id
    assert failure["trace_id"] == requested.trace_id
    assert failure["actor"] == "teller-7"
    async with orchestrators(host):
        saga = await settled(client, request.transfer_id)
    assert saga["status"] == "completed", saga


async def test_a_deadline_between_attempts_voids_the_reserve_that_went_unanswered(
    host: ServiceHost, client: httpx.AsyncClient, trade: Trade, pool: asyncpg.Pool,
    settings: Settings,
) -> None:
    # The reserve waits behind a slow writer of the payer's account, times out, and its next
    # attempt is due after the saga's deadline: the deadline compensates. The reserve was
    # only slow, and places its holds once the writer is done: the void must undo them.
    patient = settings.model_copy(update={
        "saga_deadline_s": 2.5, "saga_backoff_first_s": 5.0, "saga_backoff_max_s": 5.0,
    })  # fmt: skip
    payer, payee = await funded_account(client, "10.00"), await funded_account(client, None)
    await known_to_risk(client, payer, payee)
    request = transfer(payer, payee, 250)

    async with orchestrators(host, settings=patient):
        async with stream_locked(pool, settings.schema_for("account"), f"account-{payer}"):
            assert await start(host, request, patient)
            # Compensating: the void waits for the payer's lock (a saga that skipped it
            # would be final already).
            await until(functools.partial(_status_in, client, request.transfer_id,
                                          {"compensating", *FINAL}))  # fmt: skip
        saga = await settled(client, request.transfer_id)

    assert (saga["status"], saga["reason"]) == ("failed", "deadline_exceeded"), saga
    compensations = [s["step"] for s in saga["steps"] if s["is_compensation"]]
    assert list(dict.fromkeys(compensations)) == ["void", "release", "fail"]  # tries, in order
    payer_now, payee_now = await account(client, payer), await account(client, payee)
    assert (payer_now["balance"], payer_now["pending_debits"]) == ("10.00", "0.00")
    assert (payee_now["balance"], payee_now["pending_credits"]) == ("0.00", "0.00")
    risk = (await client.get(f"/v1/risk/accounts/{payer}")).json()
    assert risk["open_exposure"] == "0.00"


async def test_an_assessment_arriving_after_its_release_is_refused_and_reserves_nothing(
    host: ServiceHost, client: httpx.AsyncClient, trade: Trade, pool: asyncpg.Pool,
    settings: Settings,
) -> None:
    # The risk service's assess endpoint decides one batch at a time: a batch stuck behind
    # a slow writer of another account holds up the saga's assessment until the saga gives
    # up on it and releases it. When the assessment is decided at last, it must be refused:
    # nobody would ever release what it reserved.
    other, sink = await funded_account(client, "10.00"), await funded_account(client, None)
    payer, payee = await funded_account(client, "10.00"), await funded_account(client, None)
    await known_to_risk(client, other, sink, payer, payee)
    blocker = Assess(command_id=uuid.uuid4(), transfer_id=f"blocker-{uuid.uuid4().hex[:8]}",
                     movements=(Movement(leg_id="l", from_account=other, to_account=sink,
                                         amount_minor=1, currency="USD"),))  # fmt: skip
    request = transfer(payer, payee, 250)
    assert host.nc is not None
    sender = CommandClient(host.nc, 30.0, 0)

    async with orchestrators(host):
        async with stream_locked(pool, settings.schema_for("risk"), f"risk-{other}"):
            stuck = asyncio.create_task(
                sender.send(f"{PARTICIPANTS.risk}.assess", blocker, Decision)
            )
            await asyncio.sleep(0.3)  # the assess endpoint's batch now waits for the lock
            assert await start(host, request)
            saga = await settled(client, request.transfer_id)
        await stuck
    late = await risk_decisions(client, payer)

    assert (saga["status"], saga["reason"]) == ("failed", "retries_exhausted"), saga
    assert [(d["outcome"], d["reason"]) for d in late] == [("refused", "cancelled")]
    risk = (await client.get(f"/v1/risk/accounts/{payer}")).json()
    assert risk["open_exposure"] == "0.00"


async def risk_decisions(client: httpx.AsyncClient, account_id: str) -> list[dict[str, Any]]:
    """The account's risk decisions, once there is one (the late assessment is decided
    after its saga ended)."""
    url = "/v1/risk/decisions"

    async def decided() -> bool:
        return bool((await client.get(url, params={"account": account_id})).json()["items"])

    await until(decided)
    items: list[dict[str, Any]] = (await client.get(url, params={"account": account_id})).json()[
        "items"
    ]
    return items


async def _skewed_clock(host: ServiceHost, ahead_s: float) -> DatabaseClock:
    """The database's clock as read on a host whose own clock runs `ahead_s` ahead."""
    clock = DatabaseClock(host.runtimes["saga"].store.pool,
                          local=lambda: datetime.now(UTC) + timedelta(seconds=ahead_s))  # fmt: skip
    await clock.synchronize()
    return clock


async def test_an_orchestrator_on_a_host_whose_clock_runs_ahead_keeps_to_the_databases(
    host: ServiceHost, client: httpx.AsyncClient, trade: Trade, pool: asyncpg.Pool,
    settings: Settings,
) -> None:
    # On its own clock, a host 20 s ahead took the lease of a saga whose step a live
    # orchestrator was waiting on, and one past the deadline failed new sagas at once.
    payer, payee = await funded_account(client, "5.00"), await funded_account(client, None)
    await known_to_risk(client, payer, payee)
    request = transfer(payer, payee, 100)
    trade.hang.add(request.transfer_id)
    runtime = host.runtimes["saga"]
    ahead = await _skewed_clock(host, settings.saga_deadline_s + 60)
    assert abs(ahead() - await pool.fetchval("select clock_timestamp()")) < timedelta(seconds=1)
    assert await Orchestrator(runtime.store, runtime.nc, settings, clock=ahead).start(request)

    async with orchestrators(host) as (live,):
        await until(functools.partial(_is_told, trade, request.transfer_id))  # `complete` hangs
        late = Orchestrator(runtime.store, runtime.nc, settings, participants=PARTICIPANTS,
                            clock=ahead)  # fmt: skip
        await late.run_once()  # a saga of its own it may advance; not the live one's
        lease_owner = await pool.fetchval(
            f"select lease_owner from {settings.schema_for('saga')}.saga_runs"
            " where saga_id = $1", request.transfer_id,
        )  # fmt: skip
        trade.hang.discard(request.transfer_id)
        trade.released.set()
        saga = await settled(client, request.transfer_id)

    assert lease_owner == live.owner
    assert saga["status"] == "completed", saga
    assert trade.told(request.transfer_id) == ["complete"]
