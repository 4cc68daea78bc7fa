"""Benchmark: deleting keys with RedisSink vs the usual alternatives, in one process.

Run from the repository root (the private services are started if needed)::

    .venv/bin/python bench/redis_sink.py [--keys 100000] [--batch 1000] [--repeat 3]

Prints keys/s for one UNLINK per key (what an after-commit hook usually does), a
pipeline of single-key UNLINKs, and RedisSink.delete (multi-key UNLINK per batch),
with ratios against the per-key baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from tests.support import services  # noqa: E402

from cachesync import Settings  # noqa: E402
from cachesync.connections import redis_client  # noqa: E402
from cachesync.sinks import RedisSink  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    urls = services.start_all()
    r = redis_client(Settings(redis_url=urls["CACHESYNC_REDIS_URL"]))
    sink = RedisSink(r)
    keys = [f"bench:sink:{i}" for i in range(args.keys)]
    batches = [keys[i : i + args.batch] for i in range(0, len(keys), args.batch)]

    def one_by_one() -> None:
        for key in keys:
            r.unlink(key)

    def pipelined() -> None:
        for batch in batches:
            pipe = r.pipeline(transaction=False)
            for key in batch:
                pipe.unlink(key)
            pipe.execute()

    def cachesync() -> None:
        for batch in batches:
            sink.delete(batch)

    def measure(fn: Callable[[], None]) -> float:
        rates = []
        for _ in range(args.repeat):
            for batch in batches:
                r.mset(dict.fromkeys(batch, "v"))
            started = time.perf_counter()
            fn()
            rates.append(len(keys) / (time.perf_counter() - started))
            assert r.exists(*keys[:1000]) == 0
        return statistics.median(rates)

    results = {
        name: measure(fn)
        for name, fn in (
            ("UNLINK per key", one_by_one),
            ("pipelined UNLINKs", pipelined),
            ("RedisSink (multi-key)", cachesync),
        )
    }
    base = results["UNLINK per key"]
    print(f"{args.keys} keys in batches of {args.batch}, median of {args.repeat} runs")
    for name, rate in results.items():
        print(f"  {name:24s} {rate:12,.0f} keys/s   {rate / base:6.1f}x")


if __name__ == "__main__":
    main()
