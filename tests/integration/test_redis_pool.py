"""cachesync's Redis clients wait for a free connection instead of refusing one, boundedly.

redis-py's own pool raises "Too many connections" at the first command beyond
``max_connections``; cachesync never lets a Redis error reach the application, so
that refusal used to become a silent database read (the read path) or a delete left
to the binlog (the fast path). Real Redis, real threads: BLPOP on an empty list
holds a connection for a known time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
import redis

from cachesync.config import Settings
from cachesync.connections import redis_client
from cachesync.errors import ConfigurationError
from cachesync.reads import _async_redis_client
from tests.support import services

pytestmark = pytest.mark.services

HOLD = 0.3  # seconds each command holds its connection (BLPOP on a list that stays empty)
EMPTY = "cachesync:test:pool:never-filled"


def _settings(max_connections: int, wait: float) -> Settings:
    return Settings(
        redis_url=f"redis://{services.HOST}:{services.REDIS_PORT}/0",
        redis_max_connections=max_connections,
        redis_connect_timeout=wait,
        redis_socket_timeout=5.0,
    )


def _hold_all(client: Any, threads: int) -> tuple[list[Any], list[BaseException], float]:
    results: list[Any] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def hold() -> None:
        try:
            value = client.blpop([EMPTY], timeout=HOLD)
            with lock:
                results.append(value)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    workers = [threading.Thread(target=hold) for _ in range(threads)]
    started = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return results, errors, time.monotonic() - started


def test_redis_py_itself_refuses_the_connection_beyond_its_pool() -> None:
    """The failure this guards against, on the same server (so the test below can fail)."""
    services.start_all()
    plain = redis.Redis(host=services.HOST, port=services.REDIS_PORT, max_connections=2)
    _results, errors, _took = _hold_all(plain, 6)
    assert errors and all("Too many connections" in str(e) for e in errors)


def test_commands_beyond_the_pool_wait_for_a_connection_and_all_succeed() -> None:
    services.start_all()
    client = redis_client(_settings(max_connections=2, wait=5.0))
    results, errors, took = _hold_all(client, 6)
    assert errors == []
    assert results == [None] * 6
    assert took >= 3 * HOLD * 0.9  # three waves of two: they waited, nobody was refused
    assert client.connection_pool._created_connections <= 2


def test_the_wait_is_bounded_by_redis_connect_timeout_and_names_the_setting() -> None:
    services.start_all()
    client = redis_client(_settings(max_connections=1, wait=0.05))
    results, errors, took = _hold_all(client, 3)
    assert len(results) >= 1
    assert errors, "three commands for one connection, 50 ms of patience: some must give up"
    for error in errors:
        assert isinstance(error, redis.ConnectionError)
        assert "redis_max_connections" in str(error)
    assert took < 2 * HOLD + 1.0


def test_the_asyncio_client_waits_too() -> None:
    services.start_all()

    async def main() -> tuple[list[Any], float]:
        client = _async_redis_client(_settings(max_connections=2, wait=5.0))
        try:
            started = time.monotonic()
            results = await asyncio.gather(
                *(client.blpop([EMPTY], timeout=HOLD) for _ in range(6)), return_exceptions=True
            )
            return list(results), time.monotonic() - started
        finally:
            await client.aclose()

    results, took = asyncio.run(main())
    assert results == [None] * 6
    assert took >= 3 * HOLD * 0.9


def test_a_pool_of_no_connection_is_refused_at_start_up() -> None:
    with pytest.raises(ConfigurationError, match="redis_max_connections"):
        _settings(max_connections=0, wait=1.0)
