"""``AsyncSession`` on the private MariaDB (aiomysql): the fast path, and an event loop never blocked.

``install()`` takes an ``async_sessionmaker`` (and AsyncSession classes and
instances). The session events fire inside the AsyncSession's greenlet on the
event loop's thread, so the after-commit delete goes to a worker thread
(``FastPath.deliver_soon``); these tests wait for it with ``wait_idle()``.

The loop-lag probe: a task that sleeps 1 ms in a loop records how late it wakes
up, while the application commits with Redis FROZEN (the delete waits for the
socket timeout). Through the worker thread the lag stays at the level of the
loop's own scheduling; the same commits with the delete made inline (what
``sync_session_class`` gave before) block the loop for the socket timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, select
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from cachesync.apply import Applier
from cachesync.config import Settings
from cachesync.connections import redis_client
from cachesync.contrib.sqlalchemy import install, installed, uninstall
from cachesync.policies import ImmediateRetryPolicy
from cachesync.reads import ReadStore, configure_reads
from cachesync.sinks.redis import RedisSink
from cachesync.testing import RecordingFailureHandler
from tests.support import services

from .conftest import RecordingFastPath, World

pytestmark = [pytest.mark.services, pytest.mark.parametrize("engine", ["mariadb"], indirect=True)]

TIMEOUT = 0.5


def _async_url(mysql_url: str) -> str:
    return mysql_url.replace("mysql://", "mysql+aiomysql://", 1)


def run(factory: Callable[[AsyncEngine], Awaitable[Any]], mysql_url: str) -> Any:
    """Run *factory(engine)* on a fresh event loop with its own async engine."""

    async def main() -> Any:
        engine = create_async_engine(_async_url(mysql_url))
        try:
            return await factory(engine)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def _maker(engine: AsyncEngine, fast: RecordingFastPath, world: World) -> async_sessionmaker[AsyncSession]:
    maker = async_sessionmaker(engine, expire_on_commit=False)
    install(maker, fast_path=fast, outbox=world.outbox)
    return maker


def test_install_accepts_the_asyncio_targets(
    engine: Engine, world: World, fast: RecordingFastPath, mysql_url: str
) -> None:
    async def check(aengine: AsyncEngine) -> None:
        maker = async_sessionmaker(aengine)
        config = install(maker, fast_path=fast)
        sync_class = maker.kw["sync_session_class"]
        assert installed(maker) is config and installed(sync_class) is config
        async with maker() as session:
            assert isinstance(session.sync_session, sync_class)
        uninstall(maker)
        one = AsyncSession(aengine)
        install(one, fast_path=fast)
        assert installed(one.sync_session) is not None
        uninstall(one)
        await one.close()

    run(check, mysql_url)


def test_commit_deletes_the_keys_and_a_rename_the_old_one(
    engine: Engine, world: World, fast: RecordingFastPath, mysql_url: str
) -> None:
    keys = [*world.user_keys(1, "ann"), *world.user_keys(1, "bea")]
    world.seed(*keys)

    async def scenario(aengine: AsyncEngine) -> None:
        maker = _maker(aengine, fast, world)
        try:
            async with maker() as s:
                s.add(world.User(id=1, username="ann"))
                await s.commit()
            assert fast.wait_idle(10)
            assert world.present(*world.user_keys(1, "ann")) == set()
            world.seed(*keys)
            async with maker() as s:
                user = await s.get(world.User, 1)
                user.username = "bea"
                await s.commit()
            assert fast.wait_idle(10)
        finally:
            uninstall(maker)

    run(scenario, mysql_url)
    assert world.present(*keys) == set()


def test_rollback_deletes_nothing(
    engine: Engine, world: World, fast: RecordingFastPath, mysql_url: str
) -> None:
    world.seed(*world.user_keys(2, "cy"))

    async def scenario(aengine: AsyncEngine) -> None:
        maker = _maker(aengine, fast, world)
        try:
            async with maker() as s:
                s.add(world.User(id=2, username="cy"))
                await s.flush()
                await s.rollback()
        finally:
            uninstall(maker)

    run(scenario, mysql_url)
    assert fast.wait_idle(10)
    assert fast.batches == []
    assert world.present(*world.user_keys(2, "cy")) == set(world.user_keys(2, "cy"))
    assert world.outbox_count(engine) == 0


def test_savepoints_rolled_back_drop_their_keys_released_ones_wait_for_the_commit(
    engine: Engine, world: World, fast: RecordingFastPath, mysql_url: str
) -> None:
    async def scenario(aengine: AsyncEngine) -> list[list[str]]:
        maker = _maker(aengine, fast, world)
        try:
            async with maker() as s, s.begin():
                s.add(world.User(id=3, username="outer"))
                nested = await s.begin_nested()
                s.add(world.User(id=4, username="dropped"))
                await s.flush()
                await nested.rollback()
                async with s.begin_nested():
                    s.add(world.User(id=5, username="released"))
                await s.flush()
                assert fast.batches == [], "nothing is delivered before the outermost commit"
            assert fast.wait_idle(10)
            return fast.batches
        finally:
            uninstall(maker)

    batches = run(scenario, mysql_url)
    delivered = {k for b in batches for k in b}
    assert set(world.user_keys(3, "outer")) <= delivered
    assert set(world.user_keys(5, "released")) <= delivered
    assert not set(world.user_keys(4, "dropped")) & delivered
    assert len(batches) == 1


@pytest.fixture
def throwaway(tmp_path: Path) -> Iterator[services.RedisProcess]:
    proc = services.start_redis(services.free_port(), tmp_path / "redis")
    yield proc
    if proc.pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
    proc.stop()


def _throwaway_fast(proc: services.RedisProcess, handler: RecordingFailureHandler) -> RecordingFastPath:
    settings = Settings(
        redis_url=proc.url, redis_connect_timeout=TIMEOUT, redis_socket_timeout=TIMEOUT
    )
    sink = RedisSink(redis_client(settings))
    return RecordingFastPath(Applier(sink, None, policy=ImmediateRetryPolicy.NONE), handler)


def test_redis_killed_at_commit_the_commit_succeeds_and_the_failures_are_handed_off(
    engine: Engine,
    world: World,
    throwaway: services.RedisProcess,
    handler: RecordingFailureHandler,
    mysql_url: str,
) -> None:
    fast = _throwaway_fast(throwaway, handler)

    async def scenario(aengine: AsyncEngine) -> float:
        maker = _maker(aengine, fast, world)
        try:
            async with maker() as s:
                s.add(world.User(id=6, username="dora", nickname="n"))
                await s.flush()
                throwaway.kill()
                started = time.monotonic()
                await s.commit()
                return time.monotonic() - started
        finally:
            uninstall(maker)

    elapsed = run(scenario, mysql_url)
    assert fast.wait_idle(10)
    with engine.connect() as conn:
        assert conn.execute(select(world.User.username)).scalars().all() == ["dora"]
    assert sorted(handler.keys) == sorted([*world.user_keys(6, "dora"), world.list_key("n")])
    assert elapsed < TIMEOUT + 2, f"the commit waited {elapsed:.2f}s for a dead Redis"


class InlineFastPath(RecordingFastPath):
    """The delete made on the committing thread, as the ``sync_session_class`` workaround did."""

    def deliver_soon(self, keys: Any) -> None:
        self.deliver(keys)


async def _lag_probe(stop: asyncio.Event, lags: list[float]) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append(time.perf_counter() - started - 0.001)


def test_the_event_loop_is_not_blocked_by_the_fast_path_with_redis_frozen(
    engine: Engine,
    world: World,
    throwaway: services.RedisProcess,
    handler: RecordingFailureHandler,
    mysql_url: str,
) -> None:
    assert throwaway.pid is not None

    def measure(fast: RecordingFastPath, first_id: int) -> float:
        async def scenario(aengine: AsyncEngine) -> float:
            maker = _maker(aengine, fast, world)
            async with maker() as s:  # connect while Redis answers, then freeze it
                s.add(world.User(id=first_id, username=f"u{first_id}"))
                await s.commit()
            assert fast.wait_idle(10)
            os.kill(throwaway.pid or 0, signal.SIGSTOP)
            stop, lags = asyncio.Event(), []
            probe = asyncio.create_task(_lag_probe(stop, lags))
            try:
                for n in range(1, 6):
                    async with maker() as s:
                        s.add(world.User(id=first_id + n, username=f"u{first_id + n}"))
                        await s.commit()
            finally:
                stop.set()
                await probe
                os.kill(throwaway.pid or 0, signal.SIGCONT)
                uninstall(maker)
            return max(lags)

        lag: float = run(scenario, mysql_url)
        assert fast.wait_idle(30)
        return lag

    off_loop = measure(_throwaway_fast(throwaway, handler), 100)
    inline = measure(InlineFastPath(_throwaway_fast(throwaway, handler)._applier, handler), 200)
    print(
        f"\nevent-loop lag, 5 AsyncSession commits with Redis frozen (socket timeout {TIMEOUT}s): "
        f"max {off_loop * 1000:.1f} ms with cachesync's worker thread; "
        f"{inline * 1000:.1f} ms with the delete inline"
    )
    assert inline >= TIMEOUT * 0.9, "the probe must see an inline delete block the loop"
    # The guarantee, with room for a loaded machine: the loop never waits for Redis (the
    # numbers themselves are printed above and by bench/reads.py).
    assert off_loop < TIMEOUT / 2, f"cachesync blocked the event loop for {off_loop * 1000:.0f} ms"


def test_aget_reads_through_on_redis_asyncio(
    engine: Engine, world: World, fast: RecordingFastPath, redis_url: str, mysql_url: str,
    redis_conn: redis.Redis,
) -> None:  # fmt: skip
    from cachesync import config

    config.configure(redis_url=redis_url)
    configure_reads(ReadStore())
    key = world.user_keys(7, "eve")[0]

    async def scenario(aengine: AsyncEngine) -> list[Any]:
        maker = _maker(aengine, fast, world)
        try:
            async with maker() as s:
                s.add(world.User(id=7, username="eve", nickname="e"))
                await s.commit()
            assert fast.wait_idle(10)
            first = await world.User.cache.aget(7, session=maker)
            cached = bool(redis_conn.exists(key))
            async with maker() as s:
                second = await world.User.cache.aget_by(username="eve", session=s)
                user = await s.get(world.User, 7)
                user.nickname = "changed"
                await s.commit()
            assert fast.wait_idle(10)
            third = await world.User.cache.aget(7, session=maker)
            return [first.nickname, cached, second.id, third.nickname]
        finally:
            uninstall(maker)

    try:
        assert run(scenario, mysql_url) == ["e", True, 7, "changed"]
    finally:
        configure_reads(None)
        config.reset_settings()


def test_aget_in_a_transaction_that_wrote_the_row_never_caches_the_uncommitted_value(
    engine: Engine, world: World, fast: RecordingFastPath, redis_url: str, mysql_url: str,
    redis_conn: redis.Redis,
) -> None:  # fmt: skip
    from cachesync import config

    config.configure(redis_url=redis_url)
    configure_reads(ReadStore())
    key = world.user_keys(8, "fay")[0]

    async def scenario(aengine: AsyncEngine) -> tuple[str, str]:
        maker = _maker(aengine, fast, world)
        try:
            async with maker() as s:
                s.add(world.User(id=8, username="fay", nickname="committed"))
                await s.commit()
            assert fast.wait_idle(10)
            async with maker() as s:
                user = await s.get(world.User, 8)
                user.nickname = "uncommitted"
                await s.flush()  # in this transaction only
                seen = await world.User.cache.aget(8, session=s)
                await s.rollback()
            return seen.nickname, str(
                (await world.User.cache.aget(8, session=maker)).nickname
            )
        finally:
            uninstall(maker)

    try:
        seen, after = run(scenario, mysql_url)
        assert seen == "committed", "read from a fresh session: committed data only"
        assert after == "committed"
        assert redis_conn.exists(key)
    finally:
        configure_reads(None)
        config.reset_settings()
