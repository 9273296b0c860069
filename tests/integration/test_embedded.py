"""The embedded servers: they start on free ports, answer clients and keep their data.

These always use ``ledger.embedded`` (never the servers named by the environment), each
with its own data directory.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import nats
import pytest

from ledger.embedded import EmbeddedNats, EmbeddedPostgres, EmbeddedServerError, free_port
from ledger.embedded._lock import owning


def _port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path / "postgres")
    yield server
    server.stop()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path / "nats")
    yield server
    server.stop()


def test_free_port_never_returns_the_machine_server_ports() -> None:
    ports = {free_port() for _ in range(50)}

    assert not ports & {5432, 4222}


@pytest.mark.parametrize("port", [5432, 4222])
def test_reserved_ports_are_refused(tmp_path: Path, port: int) -> None:
    with pytest.raises(EmbeddedServerError, match="reserved"):
        EmbeddedPostgres(tmp_path, port=port)
    with pytest.raises(EmbeddedServerError, match="reserved"):
        EmbeddedNats(tmp_path, port=port)


async def test_embedded_postgres_answers_on_a_free_local_port(postgres: EmbeddedPostgres) -> None:
    dsn = await asyncio.to_thread(postgres.start)

    assert urlsplit(dsn).hostname == "127.0.0.1"
    assert _port_of(dsn) != 5432
    connection = await asyncpg.connect(dsn)
    try:
        assert await connection.fetchval("select 1") == 1
        assert await connection.fetchval("show fsync") == "on"
    finally:
        await connection.close()


async def test_embedded_postgres_keeps_data_and_port_across_restart(
    postgres: EmbeddedPostgres,
) -> None:
    first_dsn = await asyncio.to_thread(postgres.start)
    connection = await asyncpg.connect(first_dsn)
    try:
        await connection.execute("create table kept (id int primary key)")
        await connection.execute("insert into kept values (7)")
    finally:
        await connection.close()

    await asyncio.to_thread(postgres.stop)
    await asyncio.to_thread(postgres.stop)  # idempotent
    second_dsn = await asyncio.to_thread(postgres.start)

    assert second_dsn == first_dsn
    connection = await asyncpg.connect(second_dsn)
    try:
        assert await connection.fetchval("select id from kept") == 7
    finally:
        await connection.close()


async def test_embedded_nats_delivers_messages_with_jetstream_on(
    nats_server: EmbeddedNats,
) -> None:
    url = await asyncio.to_thread(nats_server.start)

    assert _port_of(url) != 4222
    client = await nats.connect(url)
    try:
        subscription = await client.subscribe("greetings")
        await client.publish("greetings", b"hello")
        message = await subscription.next_msg(timeout=5)
        assert message.data == b"hello"
        account = await client.jetstream().account_info()
        assert account.streams == 0
    finally:
        await client.close()


async def test_embedded_nats_keeps_streams_and_port_across_restart(
    nats_server: EmbeddedNats,
) -> None:
    first_url = await asyncio.to_thread(nats_server.start)
    client = await nats.connect(first_url)
    try:
        jetstream = client.jetstream()
        await jetstream.add_stream(name="KEPT", subjects=["kept.>"])
        await jetstream.publish("kept.one", b"1")
    finally:
        await client.close()

    second_url = await asyncio.to_thread(nats_server.restart)

    assert second_url == first_url
    client = await nats.connect(second_url)
    try:
        stream = await client.jetstream().stream_info("KEPT")
        assert stream.state.messages == 1
    finally:
        await client.close()


def test_a_second_owner_of_a_data_directory_is_refused_while_the_first_runs(
    tmp_path: Path,
) -> None:
    # A second `ledger up` on one directory adopted the first one's PostgreSQL and stopped
    # it on its way out, under the first one's feet.
    refused = pytest.raises(EmbeddedServerError, match=rf"pid {os.getpid()}.*another --data-dir")
    with owning(tmp_path), refused, owning(tmp_path):
        pass
    with owning(tmp_path):  # released with its owner
        pass


def test_a_nats_server_left_by_a_killed_owner_is_stopped_before_another_starts(
    tmp_path: Path,
) -> None:
    first = EmbeddedNats(tmp_path / "nats")
    first.start()
    orphan = first._process
    assert orphan is not None
    first._process = None  # its owner is gone (kill -9): nobody will stop this server

    try:
        with EmbeddedNats(tmp_path / "nats") as second:
            assert orphan.wait(timeout=30) is not None  # stopped, not left beside it
            assert second.url
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()


def test_an_initdb_that_did_not_finish_is_run_again(tmp_path: Path) -> None:
    # Ctrl-C during a first start's initdb left PG_VERSION and half a cluster, which every
    # later start used and failed on ("database postgres does not exist").
    data_dir = tmp_path / "postgres"
    (data_dir / "pgdata").mkdir(parents=True)
    (data_dir / "pgdata" / "PG_VERSION").write_text("15\n")  # and nothing else
    (data_dir / "initdb.unfinished").touch()

    with EmbeddedPostgres(data_dir) as server:
        version = asyncio.run(_server_version(server.dsn))

    assert version  # a server that answers, on a whole cluster
    assert not (data_dir / "initdb.unfinished").exists()


async def _server_version(dsn: str) -> str:
    connection = await asyncpg.connect(dsn)
    try:
        version: str = await connection.fetchval("show server_version")
        return version
    finally:
        await connection.close()
