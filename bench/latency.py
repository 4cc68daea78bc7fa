"""Commit -> key gone through the binlog path (``cachesync listen``), per batch preset.

Single-row autocommit UPDATEs at a steady rate; before each one the row's key
is SET, and its deletion is timed with Redis keyspace notifications
(``notify-keyspace-events Eg``; UNLINK reports as ``del``). The latency of one
transaction is the time from its COMMIT returning to the ``del`` event of its
key, both on this process's clock. The fast path (after-commit delete) is not
installed here: this is the binlog path alone.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

from bench import models
from bench.common import Env, Listen, sync_point

ROWS = 40_000


def percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"n": 0}
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "n": len(ordered),
        "p50": at(0.50),
        "p95": at(0.95),
        "p99": at(0.99),
        "max": ordered[-1],
        "mean": statistics.fmean(ordered),
    }


def run_one(env: Env, preset: str | None, rate: int, seconds: float) -> dict[str, Any]:
    schema = f"bench_lat_{preset or 'default'}_{rate}"
    env.fresh_schema(schema, 1, ROWS)
    env.redis.config_set("notify-keyspace-events", "Eg")
    deleted: dict[bytes, float] = {}
    pubsub = env.redis.pubsub()
    pubsub.subscribe("__keyevent@0__:del")
    listening = threading.Event()
    done = threading.Event()

    def listen_dels() -> None:
        listening.set()
        while not done.is_set():
            message = pubsub.get_message(timeout=0.1)
            if message is not None and message["type"] == "message":
                deleted.setdefault(message["data"], time.perf_counter())

    thread = threading.Thread(target=listen_dels, daemon=True)
    thread.start()
    listening.wait()
    committed: dict[bytes, float] = {}
    with Listen(env, schema, batch=preset) as listen:
        listen.wait_streaming()
        sync_point(env, schema)
        conn = env.connect()
        table = f"{schema}.{models.table_name(0)}"
        total = min(int(rate * seconds), ROWS - 1)
        interval = 1.0 / rate
        # Keys are set beforehand (one pipeline) so the loop holds only the commits.
        keys = [models.key_by_id(schema, 0, 1 + n).encode() for n in range(total)]
        pipe = env.redis.pipeline(transaction=False)
        for key in keys:
            pipe.set(key, "cached")
        pipe.execute()
        started = time.perf_counter()
        with conn.cursor() as cur:
            for n in range(total):
                due = started + n * interval
                pause = due - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                # Timed from just before the autocommit statement is sent: the server
                # commits somewhere inside the round trip, and the sidecar's delete can
                # arrive before this thread even sees the reply (an upper bound, never < 0).
                committed[keys[n]] = time.perf_counter()
                cur.execute(f"UPDATE {table} SET nickname = 'n{n}' WHERE id = {n + 1}")
        achieved = total / (time.perf_counter() - started)
        conn.close()
        deadline = time.monotonic() + 30
        while len(deleted.keys() & committed.keys()) < len(committed):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
    done.set()
    thread.join()
    pubsub.close()
    latencies = [(deleted[k] - t) * 1000 for k, t in committed.items() if k in deleted]
    env.drop(schema)
    result = {
        "preset": preset or "default (adaptive)",
        "rate": rate,
        "achieved_rate": achieved,
        "missing": len(committed) - len(latencies),
        "ms": percentiles(latencies),
        "samples_ms": latencies,
    }
    p = result["ms"]
    print(
        f"  {result['preset']:20} {rate:5} tx/s (achieved {achieved:6.0f}): p50 {p.get('p50', 0):6.1f}"
        f"  p95 {p.get('p95', 0):6.1f}  p99 {p.get('p99', 0):6.1f}  max {p.get('max', 0):7.1f} ms"
        f"  ({p['n']} samples, {result['missing']} missing)",
        flush=True,
    )
    return result


def run(env: Env, quick: bool) -> list[dict[str, Any]]:
    seconds = 5.0 if quick else 15.0
    print(f"\ncommit -> key gone, binlog path, single-row transactions ({seconds:.0f}s per run):")
    results = []
    for rate in (200, 1000):
        for preset in (None, "low_latency", "throughput"):
            results.append(run_one(env, preset, rate, seconds))
    return results
