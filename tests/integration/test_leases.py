"""Leases on the private Redis: no stale fill after an invalidation, collapsed misses."""

from __future__ import annotations

import threading
import uuid
from typing import Any

from cachesync import Settings
from cachesync.connections import redis_client
from cachesync.leases import Leases
from cachesync.sinks import RedisSink


def test_hit_miss_and_ttl(redis_url: str) -> None:
    r = redis_client(Settings(redis_url=redis_url))
    key = f"lease:{uuid.uuid4().hex}"
    leases = Leases(r, ttl=60)
    assert leases.cached(key, lambda: {"name": "ann"}) == {"name": "ann"}
    assert leases.cached(key, lambda: {"name": "never called"}) == {"name": "ann"}
    assert 0 < r.pttl(key) <= 60_000


def test_invalidation_during_load_prevents_the_stale_fill(redis_url: str) -> None:
    r = redis_client(Settings(redis_url=redis_url))
    key = f"lease:{uuid.uuid4().hex}"
    leases = Leases(r)

    def load_then_get_invalidated() -> str:
        value = "old row"  # read from the database before the writer commits
        RedisSink(r).delete([key])  # the writer commits; cachesync deletes the key
        return value

    assert leases.cached(key, load_then_get_invalidated) == "old row"
    assert r.get(key) is None, "a stale value was cached after its invalidation"
    assert leases.cached(key, lambda: "new row") == "new row"
    assert r.get(key) == b'"new row"'


def test_concurrent_misses_load_once(redis_url: str) -> None:
    r = redis_client(Settings(redis_url=redis_url))
    key = f"lease:{uuid.uuid4().hex}"
    leases = Leases(r, wait=0.005)
    calls: list[int] = []
    gate = threading.Event()

    def slow_loader() -> int:
        calls.append(1)
        gate.wait(2)
        return 42

    results: list[int] = []
    threads = [
        threading.Thread(target=lambda: results.append(leases.cached(key, slow_loader)))
        for _ in range(10)
    ]
    for t in threads:
        t.start()
    while not calls:
        pass
    gate.set()
    for t in threads:
        t.join()
    assert results == [42] * 10
    assert len(calls) == 1


def test_redis_down_still_serves_reads() -> None:
    dead = redis_client(Settings(redis_url="redis://127.0.0.1:9/0", redis_connect_timeout=0.2))
    assert Leases(dead).cached("k", lambda: 7) == 7


def test_async_leases_refuse_the_stale_fill_and_collapse_misses(redis_url: str) -> None:
    import asyncio

    import redis.asyncio

    from cachesync.leases import AsyncLeases

    key = f"lease:{uuid.uuid4().hex}"
    other = f"lease:{uuid.uuid4().hex}"
    sync = redis_client(Settings(redis_url=redis_url))

    async def main() -> tuple[str, list[int], int]:
        client = redis.asyncio.Redis.from_url(redis_url, socket_timeout=5)
        leases = AsyncLeases(client, wait=0.005, lease_ms=20_000)

        async def invalidated_during_load() -> str:
            RedisSink(sync).delete([key])  # the writer commits; cachesync deletes the key
            return "old row"

        first = await leases.cached(key, invalidated_during_load)
        assert await client.get(key) is None, "a stale value was cached after its invalidation"
        calls: list[int] = []

        async def slow() -> int:
            calls.append(1)
            await asyncio.sleep(0.3)
            return 42

        results = await asyncio.gather(*(leases.cached(other, slow) for _ in range(50)))
        await client.aclose()
        return first, results, len(calls)

    first, results, loads = asyncio.run(main())
    assert first == "old row"
    assert results == [42] * 50
    assert loads == 1


def test_async_leases_answer_with_redis_down() -> None:
    import asyncio

    import redis.asyncio

    from cachesync.leases import AsyncLeases

    async def main() -> int:
        dead = redis.asyncio.Redis.from_url("redis://127.0.0.1:9/0", socket_connect_timeout=0.2)

        async def load() -> int:
            return 7

        return await AsyncLeases(dead).cached("k", load)

    assert asyncio.run(main()) == 7


def _script_calls(r: Any) -> int:
    stats = r.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


def test_a_hit_is_one_plain_get_and_an_unreadable_value_is_never_overwritten(
    redis_url: str,
) -> None:
    """The hit path skips the acquire script (it cost a hit ~1.5x a GET); a value that is
    not a marker is served as the script would serve it, and bytes the serialiser cannot
    read are loaded around, not replaced."""
    r = redis_client(Settings(redis_url=redis_url))
    key = f"lease:{uuid.uuid4().hex}"
    leases = Leases(r)
    assert leases.cached(key, lambda: [1, 2]) == [1, 2]  # miss: acquire + fill
    before = _script_calls(r)
    for _ in range(20):
        assert leases.cached(key, lambda: "never called") == [1, 2]
    assert _script_calls(r) == before, "a hit ran a script"
    r.set(key, b"not json {")
    assert leases.cached(key, lambda: "loaded") == "loaded"
    assert r.get(key) == b"not json {"


def test_read_api_reuses_its_leases_per_client(redis_url: str) -> None:
    """Building Leases registers two scripts per read; the read API builds one per client."""
    from cachesync import Registry, Sync, resolve
    from cachesync.reads import ModelReads, ReadStore

    registry = Registry()
    registry.add(
        resolve(
            "t.Lease",
            Sync(keys=["lease-api:{id}"]),
            table="t",
            schema="s",
            columns={"id": "id"},
            primary_key=["id"],
        )
    )
    r = redis_client(Settings(redis_url=redis_url))
    reads = ModelReads(registry.tables()[0], store=ReadStore(client=r))
    first = reads._leases(r, asynchronous=False)
    assert reads._leases(r, asynchronous=False) is first
    other = redis_client(Settings(redis_url=redis_url))
    assert reads._leases(other, asynchronous=False) is not first
    key = f"{uuid.uuid4().hex}"
    assert reads.read({"id": key}, lambda: {"v": 1}) == {"v": 1}
    assert reads.read({"id": key}, lambda: {"v": 2}) == {"v": 1}
