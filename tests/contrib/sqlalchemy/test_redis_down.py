"""Redis down or frozen during the commit: the application's commit succeeds, in bounded time,
and the deletes that failed reach the failure handler.

Each test runs its own throwaway ``redis-server`` (tests/support/services.py) so the shared
Redis is never stopped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from cachesync.actions import DeleteKeys
from cachesync.apply import Applier
from cachesync.config import Settings
from cachesync.connections import redis_client
from cachesync.contrib.sqlalchemy import install, uninstall
from cachesync.errors import TransientError
from cachesync.policies import ImmediateRetryPolicy
from cachesync.sinks.redis import RedisSink
from cachesync.testing import RecordingFailureHandler
from tests.support import services

from .conftest import RecordingFastPath, World

pytestmark = pytest.mark.services

TIMEOUT = 0.5  # redis_connect_timeout / redis_socket_timeout of the application


@pytest.fixture
def throwaway(tmp_path: Path) -> Iterator[services.RedisProcess]:
    proc = services.start_redis(services.free_port(), tmp_path / "redis")
    yield proc
    if proc.pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)  # in case a test left it frozen
    proc.stop()


@pytest.fixture
def AppSessions(
    mariadb: Engine, world: World, throwaway: services.RedisProcess, handler: RecordingFailureHandler
) -> Iterator[tuple[sessionmaker[Session], RecordingFastPath]]:
    settings = Settings(
        redis_url=throwaway.url,
        redis_connect_timeout=TIMEOUT,
        redis_socket_timeout=TIMEOUT,
    )
    sink = RedisSink(redis_client(settings))
    fast = RecordingFastPath(Applier(sink, None, policy=ImmediateRetryPolicy.NONE), handler)
    maker = sessionmaker(mariadb)
    install(maker, fast_path=fast, outbox=world.outbox)
    yield maker, fast
    uninstall(maker)


@pytest.mark.parametrize("engine", ["mariadb"], indirect=True)
def test_redis_killed_before_the_commit(
    AppSessions: tuple[sessionmaker[Session], RecordingFastPath],
    throwaway: services.RedisProcess,
    handler: RecordingFailureHandler,
    world: World,
    mariadb_observer: Engine,
) -> None:
    maker, fast = AppSessions
    keys = [*world.user_keys(1, "alice"), world.list_key("n")]
    with maker() as s:
        s.add(world.User(id=1, username="alice", nickname="n"))
        s.flush()
        throwaway.kill()
        started = time.monotonic()
        s.commit()  # must not raise
        elapsed = time.monotonic() - started
    assert elapsed < 4 * TIMEOUT + 1, f"commit took {elapsed:.2f}s with Redis down"
    with mariadb_observer.connect() as conn:
        assert conn.execute(select(world.User.username)).scalars().all() == ["alice"]
    assert world.outbox_count(mariadb_observer) == 1  # the intent row committed anyway
    assert sorted(handler.keys) == sorted(keys)  # one failure per key (the retry topic's key)
    assert all(
        isinstance(f.action, DeleteKeys) and len(f.action.keys) == 1 for f in handler.failures
    )
    assert all(isinstance(f.error, TransientError) for f in handler.failures)
    assert fast.batches == [keys]

    # Redis back: the next commit deletes again
    throwaway.start()
    handler.failures.clear()
    with maker.begin() as s:
        s.get(world.User, 1).username = "bob"  # type: ignore[union-attr]
    assert handler.failures == []


@pytest.mark.parametrize("engine", ["mariadb"], indirect=True)
def test_redis_frozen_during_the_commit_costs_at_most_the_socket_timeout(
    AppSessions: tuple[sessionmaker[Session], RecordingFastPath],
    throwaway: services.RedisProcess,
    handler: RecordingFailureHandler,
    world: World,
    mariadb_observer: Engine,
) -> None:
    maker, _ = AppSessions
    assert throwaway.pid is not None
    with maker.begin() as s:  # connect while Redis answers: the pool holds a live socket
        s.add(world.User(id=1, username="alice"))
    handler.failures.clear()
    os.kill(throwaway.pid, signal.SIGSTOP)  # accepts connections, never answers
    try:
        started = time.monotonic()
        with maker.begin() as s:
            s.get(world.User, 1).username = "bob"  # type: ignore[union-attr]
        elapsed = time.monotonic() - started
    finally:
        os.kill(throwaway.pid, signal.SIGCONT)
    assert TIMEOUT * 0.8 < elapsed < 2 * TIMEOUT + 1, f"commit took {elapsed:.2f}s"
    with mariadb_observer.connect() as conn:
        assert conn.execute(select(world.User.username)).scalar_one() == "bob"
    assert set(handler.keys) >= {*world.user_keys(1, "alice"), *world.user_keys(1, "bob")}
