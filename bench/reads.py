"""Benchmark: the read API's cost next to plain cache-aside, and the event-loop lag of async commits.

Run from the repository root (the private services are started if needed)::

    .venv/bin/python bench/reads.py [--reads 5000] [--commits 200]

Printed, not asserted (tests assert the guarantees, this measures them):

* hits: ``Product.cache.get(pk, session=s)`` (lease script + tagged-JSON decode
  + a detached instance) vs a plain ``GET`` + ``json.loads``, per read;
* misses: the read API's (lease, ``session.get``, compare-and-set fill) vs
  plain ``GET`` + ``session.get`` + ``SET``;
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
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from sqlalchemy import Integer, MetaData, Numeric, String, create_engine  # noqa: E402
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine  # noqa: E402
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column  # noqa: E402
from tests.support import services  # noqa: E402

from cachesync import Registry, Sync, configure  # noqa: E402
from cachesync.connections import sqlalchemy_url  # noqa: E402
from cachesync.contrib.sqlalchemy import CacheSyncMixin, install, uninstall  # noqa: E402
from cachesync.fastpath import fast_path  # noqa: E402
from cachesync.reads import ReadStore, configure_reads  # noqa: E402


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
