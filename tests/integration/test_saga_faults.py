"""The settle-legs saga under faults, end to end over real NATS and PostgreSQL: transfers
are requested on `POST /v1/transfers` of the real trade service, started from its events on
JetStream, and settled against the real account, risk and trade services.

- an orchestrator that dies at each point of a step (after StepStarted is recorded but
  before the command is sent, after the participant handled it but before its reply is
  recorded, after the reply is recorded) is finished by a new instance, with the same
  command ids, each applied once;
- one that dies after recording the saga's end, before it releases its lease, leaves no
  lease behind on the finished saga (its row equals its rebuild);
- a participant that is down for a while only delays the saga;
- a repeated Idempotency-Key never moves money twice.

Every participant serves under a name unique to this module, and the trade service runs
under a unique service name so that its relay publishes on subjects only this module's
starter follows (other modules and benchmarks share the NATS server).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

import asyncpg
import httpx
import nats
import pytest

from account_service.app import VERSION as ACCOUNT_VERSION
from account_service.app import AccountService
from account_service.commands import register_commands as register_account_commands
from ledger.commands import CommandService
from ledger.host import Runtime, Service, ServiceHost, running
from ledger.http import create_app
from ledger.settings import Settings
from saga import Orchestrator, Participants, SagaService, log
from saga.contracts import StepSucceeded, stream_of
from saga.decisions import Outcome, Send
from saga.definition import command_id
from saga.state import SagaState
from tests.integration.authorized import authorized_client
from tests.integration.renamed_services import RenamedRisk
from tests.integration.test_saga import account, funded_account, known_to_risk, until
from trade_service.app import TradeService

TOKEN = secrets.token_hex(4)
TRADE_SERVICE = f"f{TOKEN}trade"
"""The trade service's name here: its relay publishes on `ledger.<name>.>`."""
PARTICIPANTS = Participants(account=f"account-f{TOKEN}", risk=f"risk-f{TOKEN}",
                            trade=f"trade-f{TOKEN}")  # fmt: skip
STEPS = ["assess", "reserve", "post", "commit", "complete"]
FINAL = {"completed", "rejected", "failed", "requires_intervention"}
CrashPoint = Literal["before_send", "after_handled", "after_recorded"]


class _Account(AccountService):
    """The account service, its commands under this module's name; they can be taken down."""

    async def start(self, runtime: Runtime) -> None:
        self._runtime = runtime
        await self.resume()

    async def pause(self) -> None:
        """Stop serving commands (requests go unanswered until `resume`)."""
        await self.stop()

    async def resume(self) -> None:
        """Serve the commands again, as a restarted instance would."""
        runtime = self._runtime
        commands = CommandService(runtime.nc, runtime.store, name=PARTICIPANTS.account,
                                  version=ACCOUNT_VERSION)  # fmt: skip
        register_account_commands(commands, runtime.settings.assets())
        await commands.start()
        self._commands = commands


class _Trade(TradeService):
    """The real trade service under a name of its own (its relay's subjects are unique)."""

    name = TRADE_SERVICE


class CrashingOrchestrator(Orchestrator):
    """An orchestrator that stops dead at one point of one step, as a killed process does:
    it hangs there (its lease held) until its task is cancelled."""

    def __init__(self, host: ServiceHost, step: str, point: CrashPoint) -> None:
        runtime = host.runtimes["saga"]
        super().__init__(runtime.store, runtime.nc, runtime.settings, participants=PARTICIPANTS)
        self.step = step
        self.point = point
        self.crashed = asyncio.Event()

    async def _die(self) -> None:
        self.crashed.set()
        await asyncio.Future()  # never done: the task is cancelled here

    async def _send(self, state: SagaState, send: Send) -> Outcome:
        is_target = send.step.name == self.step and not send.is_compensation
        if is_target and self.point == "before_send":
            await self._die()
        outcome = await super()._send(state, send)
        if is_target and self.point == "after_handled":
            await self._die()
        return outcome

    async def _record(self, state: SagaState, entries: tuple[log.Entry, ...]) -> SagaState:
        state = await super()._record(state, entries)
        if self.point == "after_recorded" and any(
            isinstance(entry.event, StepSucceeded) and entry.event.step == self.step
            for entry in entries
        ):
            await self._die()
        return state


@pytest.fixture(scope="module")
async def settings(database_url: str, nats_url: str) -> Settings:
    # Many quick attempts: a participant that is down for a few seconds is waited out.
    return Settings(
        database_url=database_url, nats_url=nats_url, schema_prefix=f"f{TOKEN}_",
        saga_step_timeout_s=1.0, saga_step_max_attempts=40, saga_backoff_first_s=0.05,
        saga_backoff_max_s=0.2, saga_lease_s=3.0, saga_poll_interval_s=0.05,
    )  # fmt: skip


@pytest.fixture(scope="module")
async def account_service() -> _Account:
    return _Account()


@pytest.fixture(scope="module")
async def host(
    settings: Settings, pool: asyncpg.Pool, account_service: _Account
) -> AsyncIterator[ServiceHost]:
    services: list[Service] = [
        account_service, RenamedRisk(PARTICIPANTS.risk), _Trade(command_name=PARTICIPANTS.trade),
        SagaService(PARTICIPANTS, starting_subject=f"ledger.{TRADE_SERVICE}.>",
                    is_advancing=False),
    ]  # fmt: skip
    async with running(ServiceHost(settings, services)) as started:
        # The trade routes find their runtime under the usual name.
        started.runtimes["trade"] = started.runtimes[TRADE_SERVICE]
        yield started
    for name in ("account", "risk", TRADE_SERVICE, "saga"):
        await pool.execute(f"drop schema if exists {settings.schema_for(name)} cascade")
    connection = await nats.connect(settings.nats_servers)
    try:
        for durable in (f"{settings.schema_for('risk')}-accounts",
                        f"{settings.schema_for(TRADE_SERVICE)}-steps",
                        f"{settings.schema_for('saga')}-starter"):  # fmt: skip
            with contextlib.suppress(Exception):
                await connection.jetstream().delete_consumer(settings.events_stream, durable)
    finally:
        await connection.close()


@pytest.fixture(scope="module")
async def client(host: ServiceHost) -> AsyncIterator[httpx.AsyncClient]:
    async with authorized_client(create_app(host, manage_host=False)) as created:
        yield created


@contextlib.asynccontextmanager
async def advancing(*made: Orchestrator) -> AsyncIterator[None]:
    """Run the orchestrators for the block; they are gone (cancelled) after it."""
    tasks = [asyncio.create_task(o.run()) for o in made]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def fresh_orchestrator(host: ServiceHost) -> Orchestrator:
    runtime = host.runtimes["saga"]
    return Orchestrator(runtime.store, runtime.nc, runtime.settings, participants=PARTICIPANTS)


async def request_transfer(
    client: httpx.AsyncClient, payer: str, payee: str, amount: str, key: str | None = None
) -> httpx.Response:
    return await client.post(
        "/v1/transfers",
        json={"from_account": payer, "to_account": payee, "amount": amount, "currency": "USD"},
        headers={"Idempotency-Key": key or str(uuid.uuid4())},
    )


async def requested(client: httpx.AsyncClient, payer: str, payee: str, amount: str) -> str:
    """Request a transfer and wait until its saga is started; its id."""
    response = await request_transfer(client, payer, payee, amount)
    assert response.status_code == 202, response.text
    transfer_id: str = response.json()["id"]
    await until(lambda: _saga_exists(client, transfer_id))
    return transfer_id


async def _saga_exists(client: httpx.AsyncClient, saga_id: str) -> bool:
    return (await client.get(f"/v1/sagas/{saga_id}")).status_code == 200


async def saga(client: httpx.AsyncClient, saga_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/sagas/{saga_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def settled(client: httpx.AsyncClient, saga_id: str) -> dict[str, Any]:
    """The saga once it is final (or parked); bounded by `until`'s timeout."""
    await until(lambda: _is_final(client, saga_id))
    return await saga(client, saga_id)


async def _is_final(client: httpx.AsyncClient, saga_id: str) -> bool:
    return (await saga(client, saga_id))["status"] in FINAL


async def saga_log(host: ServiceHost, saga_id: str) -> list[tuple[str, dict[str, Any]]]:
    store = host.runtimes["saga"].store
    events = await store.read_stream(stream_of(saga_id), from_version=1, limit=10_000)
    return [(event.event_type, event.data) for event in events]


async def account_effects(host: ServiceHost, transfer_id: str) -> dict[str, int]:
    """How many events of each type the account service recorded for `transfer_id`."""
    store = host.runtimes["account"].store
    rows = await store.pool.fetch(
        f"select event_type, count(*) as n from {store.schema}.events"
        " where data->>'transfer_id' = $1 group by event_type", transfer_id,
    )  # fmt: skip
    return {row["event_type"]: row["n"] for row in rows}


async def assert_applied_once(host: ServiceHost, client: httpx.AsyncClient, saga_id: str) -> None:
    """Every step was sent under one command id (series 0) and applied once."""
    started = [data for kind, data in await saga_log(host, saga_id) if kind == "StepStarted"]
    for step in STEPS:
        ids = {data["command_id"] for data in started if data["step"] == step}
        assert ids == {str(command_id(saga_id, step, 0))}, (step, started)
    body = await saga(client, saga_id)
    succeeded = [s["step"] for s in body["steps"] if s["outcome"] == "succeeded"]
    assert succeeded == STEPS, body
    # One leg: a debit hold and a pending credit, placed once and posted once.
    assert await account_effects(host, saga_id) == {"HoldPlaced": 2, "HoldPosted": 2}
    transfer = (await client.get(f"/v1/transfers/{saga_id}")).json()
    assert transfer["status"] == "completed", transfer


async def assert_balances(
    client: httpx.AsyncClient, payer: str, payer_balance: str, payee: str, payee_balance: str
) -> None:
    payer_now, payee_now = await account(client, payer), await account(client, payee)
    assert (payer_now["balance"], payer_now["pending_debits"]) == (payer_balance, "0.00")
    assert (payee_now["balance"], payee_now["pending_credits"]) == (payee_balance, "0.00")


async def two_accounts(client: httpx.AsyncClient, funds: str) -> tuple[str, str]:
    payer, payee = await funded_account(client, funds), await funded_account(client, None)
    await known_to_risk(client, payer, payee)
    return payer, payee


@pytest.mark.parametrize("point", ["before_send", "after_handled", "after_recorded"])
@pytest.mark.parametrize("step", ["reserve", "post"])
async def test_a_new_orchestrator_finishes_a_saga_whose_orchestrator_died(
    host: ServiceHost, client: httpx.AsyncClient, step: str, point: CrashPoint
) -> None:
    payer, payee = await two_accounts(client, "5.00")
    saga_id = await requested(client, payer, payee, "1.25")

    doomed = CrashingOrchestrator(host, step, point)
    async with advancing(doomed):
        async with asyncio.timeout(30):
            await doomed.crashed.wait()
    assert (await saga(client, saga_id))["status"] == "running"
    async with advancing(fresh_orchestrator(host)):
        finished = await settled(client, saga_id)

    assert finished["status"] == "completed", finished
    await assert_balances(client, payer, "3.75", payee, "1.25")
    await assert_applied_once(host, client, saga_id)


async def test_a_saga_ended_by_an_orchestrator_that_died_holds_no_lease(
    host: ServiceHost, client: httpx.AsyncClient
) -> None:
    payer, payee = await two_accounts(client, "5.00")
    saga_id = await requested(client, payer, payee, "0.75")

    doomed = CrashingOrchestrator(host, "complete", "after_recorded")
    async with advancing(doomed):
        async with asyncio.timeout(30):
            await doomed.crashed.wait()
        # Dead, not yet cancelled: its release of the lease never runs.
        store = host.runtimes["saga"].store
        row = await store.pool.fetchrow(
            f"select status, lease_owner, lease_until from {store.schema}.saga_runs"
            " where saga_id = $1", saga_id,
        )  # fmt: skip

    assert row is not None
    assert dict(row) == {"status": "completed", "lease_owner": None, "lease_until": None}
    await assert_balances(client, payer, "4.25", payee, "0.75")


async def _failed_attempts(host: ServiceHost, saga_id: str, step: str) -> int:
    log = await saga_log(host, saga_id)
    return sum(1 for kind, data in log if kind == "StepFailed" and data["step"] == step)


async def test_a_saga_waits_out_an_account_service_that_is_down_before_the_pivot(
    host: ServiceHost, client: httpx.AsyncClient, account_service: _Account
) -> None:
    payer, payee = await two_accounts(client, "5.00")
    await account_service.pause()
    try:
        saga_id = await requested(client, payer, payee, "2.00")
        async with advancing(fresh_orchestrator(host)):
            await until(lambda: _has_failed(host, saga_id, "reserve", times=3))
            await account_service.resume()
            finished = await settled(client, saga_id)
    finally:
        if account_service._commands is None:
            await account_service.resume()

    assert finished["status"] == "completed", finished
    await assert_balances(client, payer, "3.00", payee, "2.00")
    await assert_applied_once(host, client, saga_id)


class _DownAtPost(Orchestrator):
    """Takes the account service down just before the first post command is sent."""

    def __init__(self, host: ServiceHost, account_service: _Account) -> None:
        runtime = host.runtimes["saga"]
        super().__init__(runtime.store, runtime.nc, runtime.settings, participants=PARTICIPANTS)
        self._account_service = account_service
        self.is_down = False

    async def _send(self, state: SagaState, send: Send) -> Outcome:
        if send.step.name == "post" and not self.is_down:
            self.is_down = True
            await self._account_service.pause()
        return await super()._send(state, send)


async def test_a_saga_past_the_pivot_waits_out_an_account_service_that_is_down(
    host: ServiceHost, client: httpx.AsyncClient, account_service: _Account
) -> None:
    payer, payee = await two_accounts(client, "5.00")
    saga_id = await requested(client, payer, payee, "0.50")
    orchestrator = _DownAtPost(host, account_service)
    try:
        async with advancing(orchestrator):
            await until(lambda: _has_failed(host, saga_id, "post", times=3))
            assert (await account(client, payer))["pending_debits"] == "0.50"
            await account_service.resume()
            finished = await settled(client, saga_id)
    finally:
        if account_service._commands is None:
            await account_service.resume()

    assert finished["status"] == "completed", finished
    await assert_balances(client, payer, "4.50", payee, "0.50")
    await assert_applied_once(host, client, saga_id)


async def _has_failed(host: ServiceHost, saga_id: str, step: str, *, times: int) -> bool:
    return await _failed_attempts(host, saga_id, step) >= times


async def test_a_repeated_idempotency_key_moves_the_money_once(
    host: ServiceHost, client: httpx.AsyncClient
) -> None:
    payer, payee = await two_accounts(client, "5.00")
    key = str(uuid.uuid4())

    async with advancing(fresh_orchestrator(host)):
        first = await request_transfer(client, payer, payee, "1.00", key)
        concurrent = await asyncio.gather(
            *(request_transfer(client, payer, payee, "1.00", key) for _ in range(3))
        )
        assert first.status_code == 202, first.text
        transfer_id = first.json()["id"]
        await until(lambda: _saga_exists(client, transfer_id))
        finished = await settled(client, transfer_id)
        again = await request_transfer(client, payer, payee, "1.00", key)
        other = await request_transfer(client, payer, payee, "2.00", key)

    assert [r.json()["id"] for r in (*concurrent, again)] == [transfer_id] * 4
    assert other.status_code == 422, other.text
    assert finished["status"] == "completed", finished
    await assert_balances(client, payer, "4.00", payee, "1.00")
    await assert_applied_once(host, client, transfer_id)
    listed = (await client.get("/v1/transfers", params={"account": payer})).json()
    assert [item["id"] for item in listed["items"]] == [transfer_id]
