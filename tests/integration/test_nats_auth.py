"""NATS credentials, permissions and TLS against a real `nats-server`.

Each test starts its own server (the embedded one's binary) with a configuration that asks
for credentials, on a free port: the session's shared server accepts anyone, so it cannot
show a refusal. The last group runs the four services, each under its own user from
deploy/nats/accounts.conf, and settles a transfer: the permissions documented for the
compose deployment are exactly enough, and each service is refused what is not its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import nkeys  # type: ignore[import-untyped]
import pytest
from nats.aio.client import Client
from pydantic import SecretStr

from ledger.auth import ask_owners
from ledger.bus import NatsRefused, NatsSecurity, connect
from ledger.embedded._common import HOST, START_TIMEOUT_S, free_port
from ledger.embedded.nats_server import _nats_info, _nats_server_binary
from ledger.host import ServiceHost
from ledger.http import create_app
from ledger.services import available_services
from ledger.settings import SERVICES, Settings
from tests.pki import make_pki

ROOT = Path(__file__).parents[2]
DEPLOY_ACCOUNTS = ROOT / "deploy" / "nats" / "accounts.conf"
PASSWORDS = {user: secrets.token_hex(16) for user in (*SERVICES, "operator")}


class NatsServer:
    """A `nats-server` running `config` (whose `listen` is filled in) until `stop`."""

    def __init__(self, directory: Path, config: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.directory = directory
        conf = directory / "server.conf"
        conf.write_text(f"listen: {HOST}:{self.port}\n{config}", encoding="utf-8")
        self._log = directory / "server.log"
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(
                [str(_nats_server_binary()), "-c", str(conf)], env=env or {},
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self._wait_until_ready()

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    def stop(self) -> None:
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"nats-server exited: {self._log.read_text()}")
            if _nats_info(self.port) is not None:
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nats-server did not answer: {self._log.read_text()}")


@contextlib.contextmanager
def nats_server(directory: Path, config: str, env: dict[str, str] | None = None
                ) -> Iterator[NatsServer]:  # fmt: skip
    server = NatsServer(directory, config, env)
    try:
        yield server
    finally:
        server.stop()


async def connected(settings: Settings, name: str = "test-nats-auth") -> Client:
    return await connect(settings.nats_servers, name, NatsSecurity.from_settings(settings))


@contextlib.asynccontextmanager
async def client(settings: Settings) -> AsyncIterator[Client]:
    nc = await connected(settings)
    try:
        yield nc
    finally:
        await nc.close()


def with_password(server: NatsServer, user: str, password: str) -> Settings:
    return Settings(nats_url=server.url, nats_user=user, nats_password=SecretStr(password))


async def refusal_of(nc: Client) -> Exception:
    """The error the server sent this client; it comes on its own time, after the PONG of a
    flush as often as not, so it is awaited (within a bound)."""
    async with asyncio.timeout(10):
        # nats-py signals a server's error only to the error callback, which connect owns.
        while nc.last_error is None:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    return nc.last_error


# ---- credentials --------------------------------------------------------------------------

PASSWORD_CONFIG = 'authorization { users: [ { user: "ledger", password: "pw-of-ledger" } ] }\n'


@pytest.fixture
def password_server(tmp_path: Path) -> Iterator[NatsServer]:
    with nats_server(tmp_path, PASSWORD_CONFIG) as server:
        yield server


async def test_the_configured_user_and_password_connect(password_server: NatsServer) -> None:
    settings = with_password(password_server, "ledger", "pw-of-ledger")

    async with client(settings) as nc:
        subscription = await nc.subscribe("greeting")
        await nc.publish("greeting", b"hello")
        message = await subscription.next_msg(timeout=10)

    assert message.data == b"hello"


async def test_no_credentials_are_refused_clearly(password_server: NatsServer) -> None:
    with pytest.raises(NatsRefused, match="Authorization Violation"):
        await connected(Settings(nats_url=password_server.url))


async def test_a_wrong_password_is_refused_clearly(password_server: NatsServer) -> None:
    settings = with_password(password_server, "ledger", "not-the-password")

    with pytest.raises(NatsRefused, match="LEDGER_NATS_USER"):
        await connected(settings)


async def test_an_nkey_seed_file_connects(tmp_path: Path) -> None:
    seed = nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER)
    public_key = nkeys.from_seed(bytearray(seed)).public_key.decode()
    seed_file = tmp_path / "ledger.nk"
    seed_file.write_bytes(seed)
    config = f'authorization {{ users: [ {{ nkey: "{public_key}" }} ] }}\n'

    with nats_server(tmp_path, config) as server:
        settings = Settings(nats_url=server.url, nats_nkey_seed_file=seed_file)
        async with client(settings) as nc:
            await nc.flush()
            assert nc.is_connected
        with pytest.raises(NatsRefused):
            await connected(Settings(nats_url=server.url))


# ---- permissions ----------------------------------------------------------------------------


async def test_a_subject_the_user_may_not_publish_is_refused(tmp_path: Path) -> None:
    config = """authorization { users: [
      { user: "risk", password: "pw-of-risk",
        permissions: { publish: { deny: ["ledger.account.>"] } } }
      { user: "reader", password: "pw-of-reader" }
    ] }
    """
    with nats_server(tmp_path, config) as server:
        reader = with_password(server, "reader", "pw-of-reader")
        risk = with_password(server, "risk", "pw-of-risk")
        async with client(reader) as reading, client(risk) as publishing:
            subscription = await reading.subscribe("ledger.>")
            await reading.flush()

            await publishing.publish("ledger.account.account.Deposited", b"forged")
            refusal = await refusal_of(publishing)
            # Sent after the refusal came back: had the forged one been delivered, it would
            # be the subscription's first message.
            await publishing.publish("ledger.risk.risk.LimitsSet", b"own")
            await publishing.flush()

            delivered = await subscription.next_msg(timeout=10)

    assert delivered.subject == "ledger.risk.risk.LimitsSet"
    # nats-py lowercases the server's message.
    assert 'permissions violation for publish to "ledger.account.account.deposited"' in str(
        refusal
    ).lower()


# ---- TLS ------------------------------------------------------------------------------------


def tls_config(pki: dict[str, Path]) -> str:
    return (f'tls {{ cert_file: "{pki["server_cert"]}", key_file: "{pki["server_key"]}",'
            f' ca_file: "{pki["ca"]}", verify: true }}\n')  # fmt: skip


async def test_mutual_tls_connects_with_the_configured_ca_and_client_certificate(
    tmp_path: Path,
) -> None:
    pki = make_pki(tmp_path)
    with nats_server(tmp_path, tls_config(pki)) as server:
        settings = Settings(nats_url=server.url, nats_tls_ca_file=pki["ca"],
                            nats_tls_cert_file=pki["client_cert"],
                            nats_tls_key_file=pki["client_key"])  # fmt: skip
        async with client(settings) as nc:
            await nc.flush()
            assert nc.is_connected


async def test_a_server_certificate_from_another_ca_is_refused_clearly(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    (tmp_path / "other").mkdir()
    other = make_pki(tmp_path / "other", ca_name="someone-else")
    with nats_server(tmp_path, tls_config(pki)) as server:
        settings = Settings(nats_url=server.url, nats_tls_ca_file=other["ca"],
                            nats_tls_cert_file=pki["client_cert"],
                            nats_tls_key_file=pki["client_key"])  # fmt: skip

        with pytest.raises(NatsRefused, match="certificate verify failed"):
            await connected(settings)


async def test_a_missing_client_certificate_is_refused_clearly(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    with nats_server(tmp_path, tls_config(pki)) as server:
        settings = Settings(nats_url=server.url, nats_tls_ca_file=pki["ca"])

        with pytest.raises(NatsRefused, match="certificate required"):
            await connected(settings)


# ---- the deployment's permissions -----------------------------------------------------------


@pytest.fixture(scope="module")
def deploy_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A server with the compose deployment's accounts and permissions, verbatim."""
    directory = tmp_path_factory.mktemp("nats-deploy")
    shutil.copy(DEPLOY_ACCOUNTS, directory / "accounts.conf")
    config = f"jetstream {{ store_dir: \"{directory / 'jetstream'}\" }}\ninclude ./accounts.conf\n"
    env = {f"NATS_{user.upper()}_PASSWORD": password for user, password in PASSWORDS.items()}
    with nats_server(directory, config, env) as server:
        yield server


def as_user(server: NatsServer, user: str, **more: object) -> Settings:
    """The settings a service runs with in the compose file, against `server`."""
    return Settings.model_validate({
        "nats_url": server.url, "nats_user": user, "nats_password": PASSWORDS[user],
        "nats_inbox_prefix": f"_INBOX.{user}", **more,
    })  # fmt: skip


@pytest.fixture(scope="module")
async def ledger_database(database_url: str) -> AsyncIterator[str]:
    """A database of its own: the deployment's durable consumer names assume no schema
    prefix, so these services cannot share the session database's schemas."""
    name = f"nats_auth_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f"create database {name}")
        yield urlsplit(database_url)._replace(path=f"/{name}").geturl()
        await admin.execute(f"drop database if exists {name} with (force)")
    finally:
        await admin.close()


@pytest.fixture(scope="module")
async def ledger(deploy_nats: NatsServer, ledger_database: str
                 ) -> AsyncIterator[dict[str, ServiceHost]]:  # fmt: skip
    """The four services, each alone in its host under its own NATS user, as deployed."""
    hosts: dict[str, ServiceHost] = {}
    async with contextlib.AsyncExitStack() as stack:
        for name, service in available_services().items():
            settings = as_user(deploy_nats, name, database_url=ledger_database, auth="off",
                               saga_poll_interval_s=0.05, trade_wait_recheck_s=0.2)  # fmt: skip
            host = ServiceHost(settings, [service])
            await host.start()
            stack.push_async_callback(host.stop)
            hosts[name] = host
        yield hosts


@contextlib.asynccontextmanager
async def http(host: ServiceHost) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(host, manage_host=False))
    async with httpx.AsyncClient(transport=transport, base_url="http://ledger") as created:
        yield created


async def test_the_services_settle_a_transfer_under_their_deployed_permissions(
    ledger: dict[str, ServiceHost], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="ledger.bus")
    async with http(ledger["account"]) as accounts, http(ledger["trade"]) as trades:
        payer, payee = [await opened(accounts, owner) for owner in ("ada", "bob")]
        deposit = await accounts.post(f"/v1/accounts/{payer}/deposits", json={"amount": "50.00"},
                                      headers={"Idempotency-Key": str(uuid.uuid4())})  # fmt: skip
        assert deposit.status_code == 201, deposit.text

        requested = await trades.post("/v1/transfers", json={
            "from_account": payer, "to_account": payee, "amount": "12.34", "currency": "USD",
        }, headers={"Idempotency-Key": str(uuid.uuid4())})  # fmt: skip
        assert requested.status_code == 202, requested.text
        transfer = await _final(trades, requested.json()["id"])
        balance = (await accounts.get(f"/v1/accounts/{payee}")).json()["balance"]

    assert transfer["status"] == "completed", transfer
    assert balance == "12.34"
    violations = [r.getMessage() for r in caplog.records if "violation" in r.getMessage().lower()]
    assert violations == []


async def test_the_trade_service_may_ask_who_owns_an_account(
    ledger: dict[str, ServiceHost],
) -> None:
    # Owner-bound tokens: the trade service checks that a transfer leaves its token's
    # owner's account by asking the account service. Without the grant every such request
    # was a 503 under the deployed permissions.
    async with http(ledger["account"]) as accounts:
        account_id = await opened(accounts, "ada")
    trade = ledger["trade"]
    assert trade.nc is not None

    owners = await ask_owners(trade.nc, trade.settings, [account_id])

    assert owners == {account_id: "ada"}


async def opened(accounts: httpx.AsyncClient, owner: str) -> str:
    response = await accounts.post("/v1/accounts", json={"owner": owner, "currency": "USD"})
    assert response.status_code == 201, response.text
    account_id: str = response.json()["id"]
    return account_id


async def _final(trades: httpx.AsyncClient, transfer_id: str) -> dict[str, object]:
    """The transfer once final: `?wait=` holds each answer until then (bounded per read)."""
    async with asyncio.timeout(60):
        while True:
            response = await trades.get(f"/v1/transfers/{transfer_id}", params={"wait": 10})
            body: dict[str, object] = response.json()
            if body.get("status") != "pending":
                return body


@pytest.mark.parametrize(("user", "subject"), [
    ("risk", "ledger.account.account.Deposited"),   # another service's events
    ("account", "ledger.saga.saga.SagaStarted"),
    ("trade", "account.reserve"),                   # only the saga sends commands
    ("saga", "account.open"),                       # and only the saga's own
    ("account", "ledger_dead.risk-accounts"),       # another consumer's dead letters
    ("risk", "$JS.API.STREAM.DELETE.LEDGER_EVENTS"),
    ("trade", "$JS.API.CONSUMER.CREATE.LEDGER_EVENTS.trade-steps.ledger.>"),  # a wider filter
])  # fmt: skip
async def test_a_service_may_not_publish_what_is_not_its_own(
    deploy_nats: NatsServer, user: str, subject: str
) -> None:
    async with client(as_user(deploy_nats, user)) as nc:
        await nc.publish(subject, b"{}")
        refusal = await refusal_of(nc)

    assert f'permissions violation for publish to "{subject.lower()}"' in str(refusal).lower()


@pytest.mark.parametrize(("user", "subject"), [
    ("risk", "_INBOX.saga.>"),     # the saga's replies
    ("risk", "account.reserve"),   # another service's commands
    ("saga", "ledger.>"),          # events are read through its durable consumer only
])  # fmt: skip
async def test_a_service_may_not_listen_to_what_is_not_its_own(
    deploy_nats: NatsServer, user: str, subject: str
) -> None:
    async with client(as_user(deploy_nats, user)) as nc:
        await nc.subscribe(subject)
        refusal = await refusal_of(nc)

    assert f'permissions violation for subscription to "{subject.lower()}"' in str(
        refusal
    ).lower()
