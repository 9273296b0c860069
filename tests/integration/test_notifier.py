"""The notifier survives the loss of its LISTEN connection, whether PostgreSQL reports it or
the connection just goes silent: it wakes its waiters, listens again on a new connection,
and hears other processes' appends as before."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from eventstore import EventStore
from eventstore import notifier as notifier_module
from eventstore.notifier import Notifier
from tests.integration.freezable_proxy import FreezableProxy

GUARD_S = 10.0
"""How long a test waits for something that should happen at once, before it gives up."""


async def listening_pid(pool: asyncpg.Pool, channel: str, other_than: int = 0) -> int:
    """The backend that LISTENs on `channel` (its last statement), once there is one."""
    for _ in range(int(GUARD_S / 0.05)):
        pid = await pool.fetchval(
            "select pid from pg_stat_activity where query = $1 and pid <> $2",
            f'LISTEN "{channel}"', other_than,
        )  # fmt: skip
        if pid is not None:
            return int(pid)
        await asyncio.sleep(0.05)
    raise AssertionError(f"nobody LISTENs on {channel}")


async def until_listening(notifier: Notifier) -> bool:
    """Whether the notifier listens again within the guard."""
    for _ in range(int(GUARD_S / 0.05)):
        if notifier.is_listening:
            return True
        await asyncio.sleep(0.05)
    return False


async def terminate(pool: asyncpg.Pool, pid: int) -> None:
    assert await pool.fetchval("select pg_terminate_backend($1)", pid)


async def test_a_lost_listen_connection_wakes_waiters_and_is_replaced(
    store: EventStore,
) -> None:
    pool = store.pool
    async with Notifier(store) as notifier:
        first_pid = await listening_pid(pool, notifier.channel)
        seen = notifier.generation

        await terminate(pool, first_pid)

        # Woken by the loss itself: whatever was in flight may have lost its NOTIFY.
        await notifier.wait_past(seen, GUARD_S)
        assert notifier.generation > seen
        second_pid = await listening_pid(pool, notifier.channel, other_than=first_pid)
        assert await until_listening(notifier)  # the LISTEN ran; its task ends right after

        # Another process's append reaches it again through PostgreSQL alone.
        seen = notifier.generation
        await pool.execute("select pg_notify($1, 'another-process')", notifier.channel)
        await notifier.wait_past(seen, GUARD_S)
        assert notifier.generation > seen
        assert second_pid != first_pid


async def test_closing_while_listening_again_holds_no_connection(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = store.pool
    monkeypatch.setattr(notifier_module, "RELISTEN_FIRST_S", 1.0)  # closed well before it
    notifier = await Notifier(store).open()
    try:
        pid = await listening_pid(pool, notifier.channel)
        seen = notifier.generation
        await terminate(pool, pid)
        await notifier.wait_past(seen, GUARD_S)  # the loss is known, a new LISTEN is due
        assert not notifier.is_listening
    finally:
        await notifier.close()

    await asyncio.sleep(1.5)  # past the first try to listen again, had it not been stopped
    listeners = await pool.fetchval(
        "select count(*) from pg_stat_activity where query = $1", f'LISTEN "{notifier.channel}"'
    )
    assert listeners == 0
    assert not notifier.is_listening


async def test_closing_just_after_the_connection_dropped_raises_nothing(
    store: EventStore,
) -> None:
    notifier = await Notifier(store).open()
    assert notifier._connection is not None
    # Dropped on our side: asyncpg detaches it now and runs our callback a turn later.
    notifier._connection.terminate()

    await notifier.close()

    assert not notifier.is_listening


async def test_a_connection_lost_as_listen_completes_is_replaced(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    listen = asyncpg.pool.PoolConnectionProxy.add_listener
    dropped: list[int] = []

    async def listen_then_drop(proxy: Any, channel: str, callback: Any) -> None:
        await listen(proxy, channel, callback)
        if not dropped:  # the first LISTEN only: its connection drops as it completes
            dropped.append(proxy.get_server_pid())
            proxy.terminate()

    monkeypatch.setattr(asyncpg.pool.PoolConnectionProxy, "add_listener", listen_then_drop)
    monkeypatch.setattr(notifier_module, "RELISTEN_FIRST_S", 1.0)
    async with Notifier(store) as notifier:
        assert dropped
        assert not notifier.is_listening  # it opened all the same, polling for now
        second_pid = await listening_pid(store.pool, notifier.channel, other_than=dropped[0])
        assert await until_listening(notifier)
    assert second_pid != dropped[0]


async def test_a_connection_gone_silent_is_dropped_and_replaced(
    store: EventStore, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(notifier_module, "PROBE_EVERY_S", 0.2)
    monkeypatch.setattr(notifier_module, "PROBE_TIMEOUT_S", 0.5)
    target = urlsplit(database_url)
    if target.hostname is None or target.port is None:
        pytest.skip("the proxy forwards TCP: the test's PostgreSQL has no host and port")
    async with FreezableProxy(target.hostname, target.port) as proxy:
        userinfo = target.netloc.rpartition("@")[0]  # the user and password, if any
        address = f"127.0.0.1:{proxy.port}"
        through_proxy = target._replace(netloc=f"{userinfo}@{address}" if userinfo else address)
        pool = await asyncpg.create_pool(urlunsplit(through_proxy), min_size=1, max_size=4)
        try:
            notifier = await Notifier(EventStore(pool, store.schema)).open()
            try:
                assert notifier.is_listening
                seen = notifier.generation

                proxy.freeze()  # a partition: nothing closes, nothing arrives

                await notifier.wait_past(seen, GUARD_S)  # the probe gave up: waiters woken
                assert not notifier.is_listening
                proxy.thaw()
                assert await until_listening(notifier)
                seen = notifier.generation
                await store.pool.execute("select pg_notify($1, 'elsewhere')", notifier.channel)
                await notifier.wait_past(seen, GUARD_S)
                assert notifier.generation > seen
            finally:
                proxy.thaw()  # a failed test's close would wait on the frozen connection
                await notifier.close()
        finally:
            pool.terminate()
