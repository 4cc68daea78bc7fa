"""Recovery after a Redis outage, as deployed: ``cachesync listen`` plus ``cachesync relay``.

Single-row UPDATEs run at 500 tx/s throughout. Redis (the private instance of
this checkout) is frozen with SIGSTOP for the outage: connections hang as on a
dead network path, and the keys it holds survive, so a lost invalidation would
stay visible. Without Kafka the sidecar's retry path is the outbox table in the
watched database and ``cachesync relay`` retries it. The figure is the number
of seconds from Redis's return (SIGCONT) until no key of a row updated before
the return exists any more.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

from bench import models
from bench.common import ROOT, Env, Listen, sync_point

RATE = 500


def _redis_pid() -> int:
    return int((ROOT / ".services" / "redis.pid").read_text().split()[0])


def run(env: Env, outage: float) -> dict[str, Any]:
    schema = "bench_recovery"
    warm, after = 3.0, 60.0
    rows = int(RATE * (warm + outage + after)) + 10
    env.fresh_schema(schema, 1, rows)
    print(f"\nrecovery after a {outage:.0f} s Redis outage at {RATE} tx/s (listen + relay):")
    keys = [models.key_by_id(schema, 0, i) for i in range(rows)]
    pipe = env.redis.pipeline(transaction=False)
    for key in keys:
        pipe.set(key, "cached")
    pipe.execute()
    listen = Listen(env, schema)
    relay = Listen(env, schema, command=("relay", "--poll-interval", "0.2"))
    written = [0]
    rate_seen = [0.0]
    stop = threading.Event()

    def writer() -> None:
        conn = env.connect()
        table = f"{schema}.{models.table_name(0)}"
        started = time.perf_counter()
        with conn.cursor() as cur:
            for n in range(1, rows):
                if stop.is_set():
                    break
                pause = started + n / RATE - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                cur.execute(f"UPDATE {table} SET nickname = 'o{n}' WHERE id = {n}")
                written[0] = n
        rate_seen[0] = written[0] / (time.perf_counter() - started)
        conn.close()

    redis_pid = _redis_pid()
    with listen, relay:
        listen.wait_streaming()
        sync_point(env, schema)
        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        time.sleep(warm)
        os.kill(redis_pid, signal.SIGSTOP)
        try:
            time.sleep(outage)
        finally:
            os.kill(redis_pid, signal.SIGCONT)
        returned = time.perf_counter()
        owed = keys[1 : written[0] + 1]
        consistent = None
        while time.perf_counter() - returned < after:
            pipe = env.redis.pipeline(transaction=False)
            for first in range(0, len(owed), 1000):
                pipe.exists(*owed[first : first + 1000])
            if sum(pipe.execute()) == 0:
                consistent = time.perf_counter() - returned
                break
            time.sleep(0.1)
        stop.set()
        thread.join()
        left = sum(env.redis.exists(*owed[i : i + 1000]) for i in range(0, len(owed), 1000))
        handoffs = listen.log.read_text(errors="replace").count("retry path")
    env.drop(schema)
    result = {
        "outage_seconds": outage,
        "rate": RATE,
        "achieved_rate": round(rate_seen[0]),
        "rows_before_return": len(owed),
        "seconds_to_consistent": consistent,
        "keys_left": left,
        "sidecar_log_lines_naming_the_retry_path": handoffs,
    }
    if consistent is None:
        result["summary"] = (
            f"after a {outage:.0f} s Redis outage at {RATE} tx/s (achieved {rate_seen[0]:.0f}), "
            f"{left} of {len(owed)} keys were "
            f"still stale {after:.0f} s after Redis returned"
        )
    else:
        result["summary"] = (
            f"after a {outage:.0f} s Redis outage at {RATE} tx/s (achieved {rate_seen[0]:.0f}), "
            f"every one of the {len(owed):,} keys of rows updated before Redis returned was "
            f"deleted {consistent:.1f} s after its return"
        )
    print("  " + result["summary"], flush=True)
    return result
