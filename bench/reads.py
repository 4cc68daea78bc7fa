"""Benchmark: the read API's cost next to plain cache-aside, and the event-loop lag of async commits.

Run from the repository root (the private services are started if needed)::

    .venv/bin/python bench/reads.py [--reads 5000] [--commits 200]

Printed, not asserted (tests assert the guarantees, this measures them):

* hits: ``Product.cache.get(pk, session=s)`` (lease script + tagged-JSON decode
  + a detached instance) vs a plain ``GET`` + ``json.loads``, per read;
* misses: the read API's (lease, ``session.get``, compare-and-set fill) vs
  plain ``GET`` + ``session.get`` + ``SET``;
* concurrent misses: 1,000 threads released together on one cold key, each with
  its own session: how many database loads the read API does (its lease lets
  one load and the rest wait for the fill) vs naive cache-aside (``GET``, on a
  miss ``session.get`` + ``SET``), counted as SELECTs of the table, each made to
  take 20 ms (``LOAD_SECONDS``; the cost that makes a read worth caching);
* asyncio: ``AsyncSession`` commits with the hooks installed, and the largest
  delay a 1 ms ticker task saw meanwhile (cachesync's delete runs on a worker
  thread), with Redis answering.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from sqlalchemy import Integer, MetaData, Numeric, String, create_engine, event  # noqa: E402
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine  # noqa: E402
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column  # noqa: E402
from tests.support import services  # noqa: E402

from cachesync import Registry, Sync, configure  # noqa: E402
from cachesync.config import Settings  # noqa: E402
from cachesync.connections import redis_client, sqlalchemy_url  # noqa: E402
from cachesync.contrib.sqlalchemy import CacheSyncMixin, install, uninstall  # noqa: E402
from cachesync.fastpath import fast_path  # noqa: E402
from cachesync.reads import ReadStore, configure_reads, current_store  # noqa: E402


class Base(DeclarativeBase):
    metadata = MetaData()


class Product(CacheSyncMixin, Base):
    __tablename__ = "bench_reads_product"
    __cachesync_registry__ = Registry()
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    sku: Mapped[str] = mapped_column(String(32))
    price: Mapped[Any] = mapped_column(Numeric(10, 2))
    __cachesync__ = Sync(keys=["bench:product:{id}"])


def _us(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[int(len(ordered) * 0.99) - 1]
    return f"p50 {statistics.median(ordered) * 1e6:7.0f} us  p99 {p99 * 1e6:7.0f} us"


def _timed(fn: Any, n: int) -> list[float]:
    out = []
    for i in range(n):
        started = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - started)
    return out


#: How long one database load takes in the concurrent-miss figure (added to each SELECT of
#: the table): a cached read is usually one that is expensive to compute.
LOAD_SECONDS = 0.02


def concurrent_loads(engine: Any, redis_url: str, readers: int = 1000) -> tuple[int, int]:
    """Database loads of *readers* simultaneous reads of one cold key: (read API, naive).

    Both share cachesync's own Redis client, whose pool waits for a free
    connection beyond ``redis_max_connections`` (here 64, with a minute of
    patience): redis-py's default pool refuses the 101st connection, and a read
    whose Redis call fails is served from the database, which would count Redis
    errors as loads (src/cachesync/redis_pool.py)."""
    r = redis_client(
        Settings(redis_url=redis_url, redis_max_connections=64, redis_connect_timeout=60)
    )
    previous = current_store()
    configure_reads(ReadStore(client=r))
    loads = [0]
    lock = threading.Lock()

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and Product.__tablename__ in statement:
            with lock:
                loads[0] += 1
            time.sleep(LOAD_SECONDS)  # what makes a miss worth caching: the query's cost

    event.listen(engine, "before_cursor_execute", count)

    def naive(s: Session) -> None:
        if r.get("bench:plain:0") is None:
            p = s.get(Product, 0)
            assert p is not None
            r.set("bench:plain:0", json.dumps({"id": p.id, "sku": p.sku, "price": str(p.price)}))

    def api(s: Session) -> None:
        Product.cache.get(0, session=s)

    out = []
    try:
        for read in (api, naive):
            r.unlink("bench:product:0", "bench:plain:0")
            loads[0] = 0
            gate = threading.Barrier(readers)

            def reader(read: Any = read, gate: threading.Barrier = gate) -> None:
                with Session(engine) as s:
                    gate.wait()
                    read(s)

            threads = [threading.Thread(target=reader) for _ in range(readers)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            out.append(loads[0])
    finally:
        event.remove(engine, "before_cursor_execute", count)
        configure_reads(previous)
        r.close()
    return out[0], out[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=5000)
    parser.add_argument("--commits", type=int, default=200)
    args = parser.parse_args()
    urls = services.start_all()
    engine = create_engine(sqlalchemy_url(urls["CACHESYNC_MYSQL_URL"]))
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    r = redis.Redis.from_url(urls["CACHESYNC_REDIS_URL"])
    configure(redis_url=urls["CACHESYNC_REDIS_URL"])
    configure_reads(ReadStore(client=r))
    rows = 500
    with Session(engine) as s:
        s.add_all(Product(id=i, sku=f"sku-{i}", price="9.99") for i in range(rows))
        s.commit()
    session = Session(engine)
    try:
        keys = [f"bench:product:{i}" for i in range(rows)]
        plain = [f"bench:plain:{i}" for i in range(rows)]
        r.unlink(*keys, *plain)

        def api(i: int) -> None:
            Product.cache.get(i % rows, session=session)

        def naive(i: int) -> None:
            key = plain[i % rows]
            if r.get(key) is None:
                p = session.get(Product, i % rows)
                r.set(key, json.dumps({"id": p.id, "sku": p.sku, "price": str(p.price)}))

        session.expunge_all()
        api_miss = _timed(api, rows)
        session.expunge_all()
        naive_miss = _timed(naive, rows)
        api_hit = _timed(api, args.reads)
        naive_hit = _timed(lambda i: json.loads(r.get(plain[i % rows]) or b"null"), args.reads)
        print(f"miss  read API  {_us(api_miss)}   plain get/set  {_us(naive_miss)}")
        print(f"hit   read API  {_us(api_hit)}   plain get      {_us(naive_hit)}")
        threading.stack_size(256 * 1024)
        pooled = create_engine(
            sqlalchemy_url(urls["CACHESYNC_MYSQL_URL"]), pool_size=32, max_overflow=0,
            pool_timeout=120,
        )  # fmt: skip
        api_loads, naive_loads = concurrent_loads(pooled, urls["CACHESYNC_REDIS_URL"])
        pooled.dispose()
        print(
            f"1000 concurrent misses of one key: read API {api_loads} database load(s), "
            f"naive cache-aside {naive_loads}"
        )
    finally:
        session.close()

    async def commits() -> tuple[float, float]:
        aengine = create_async_engine(
            sqlalchemy_url(urls["CACHESYNC_MYSQL_URL"]).replace("pymysql", "aiomysql")
        )
        maker = async_sessionmaker(aengine)
        install(maker)
        lags: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            while not stop.is_set():
                started = time.perf_counter()
                await asyncio.sleep(0.001)
                lags.append(time.perf_counter() - started - 0.001)

        task = asyncio.create_task(ticker())
        started = time.perf_counter()
        for n in range(args.commits):
            async with maker() as s:
                (await s.get(Product, n % rows)).sku = f"c{n}"
                await s.commit()
        elapsed = time.perf_counter() - started
        stop.set()
        await task
        fast_path.wait_idle(30)
        uninstall(maker)
        await aengine.dispose()
        return elapsed, max(lags)

    elapsed, lag = asyncio.run(commits())
    print(
        f"async {args.commits} AsyncSession commits: {args.commits / elapsed:.0f} commits/s, "
        f"max event-loop lag {lag * 1000:.1f} ms"
    )
    Base.metadata.drop_all(engine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
