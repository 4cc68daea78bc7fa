"""Memory of ``cachesync listen`` while one huge transaction streams through it.

One UPDATE renames every row of a table in a single transaction (100k and 1M
rows in the full run). The sidecar's resident set size is sampled every 100 ms
from before the transaction until its last row's key is gone; the bound holds
when the peak does not grow with the transaction (the reader hands a batch of
at most ``max_rows`` changes at a time to lanes whose queues are bounded by
``LanePolicy.queue_actions``).
"""

from __future__ import annotations

import time
from typing import Any

from bench import models
from bench.common import Env, Listen, RssSampler, sync_point, wait_for


def run_one(env: Env, rows: int) -> dict[str, Any]:
    schema = f"bench_big_{rows}"
    started = time.perf_counter()
    env.fresh_schema(schema, 1, rows)
    print(f"  {rows:,} rows inserted in {time.perf_counter() - started:.0f}s", flush=True)
    last_key = models.key_by_id(schema, 0, rows - 1)
    with Listen(env, schema) as listen:
        listen.wait_streaming()
        sync_point(env, schema)
        time.sleep(1.0)
        with RssSampler(listen.pid) as rss:
            time.sleep(0.5)
            before = rss.samples[-1][1] / 2**20
            env.redis.set(last_key, "stale")
            started = time.perf_counter()
            env.sql(f"UPDATE {schema}.{models.table_name(0)} SET user_name = CONCAT('big-', id)")
            committed = time.perf_counter()
            wait_for(lambda: not env.redis.exists(last_key), 1800, f"{rows:,}-row transaction")
            applied = time.perf_counter()
    env.drop(schema)
    result = {
        "rows": rows,
        "rss_before_mb": before,
        "rss_peak_mb": rss.peak_mb,
        "commit_seconds": committed - started,
        "apply_seconds": applied - committed,
        "rows_per_s": rows / (applied - committed),
        "rss_series_mb": [(round(t, 2), round(r / 2**20, 1)) for t, r in rss.samples],
    }
    print(
        f"  one {rows:>9,}-row transaction: RSS {before:6.1f} MB before, peak {rss.peak_mb:6.1f} MB;"
        f" committed in {result['commit_seconds']:.1f}s, through the sidecar in "
        f"{result['apply_seconds']:.1f}s ({result['rows_per_s']:,.0f} rows/s)",
        flush=True,
    )
    return result


def run(env: Env, quick: bool) -> list[dict[str, Any]]:
    sizes = (20_000, 100_000) if quick else (100_000, 1_000_000)
    print("\nmemory of cachesync listen during one huge transaction:")
    return [run_one(env, n) for n in sizes]
