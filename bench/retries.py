"""The retry path under load: memory with many pending retries, recovery with Kafka frozen.

Both scenarios run the deployment of the Kafka retry path: ``cachesync listen``
and ``cachesync retry`` (the retry consumer, with its outbox relay thread) as
child processes, against the private Redis, MariaDB and Kafka-protocol broker
(tansu).

Redis is taken DOWN, not frozen: ``SHUTDOWN SAVE`` (its keys saved as it
stops), then restarted on the same port and directory, so it comes
back with every key it held and a lost invalidation stays visible. A SIGSTOPped
Redis would not do: the kernel keeps accepting bytes on its sockets, and on
SIGCONT it executes every UNLINK the sidecar sent before its timeouts, which
makes the retry path look instant (measured: 1,000 pending keys "drained"
0.003 s after SIGCONT). The broker is frozen with SIGSTOP (tansu's memory
storage would lose the retry topic on a restart); what it buffered meanwhile
may arrive late, as duplicates, which are idempotent.

* ``pending``: Redis down, then 1,000 (and 100,000) key invalidations are
  written as UPDATEs of 1,000-row transactions (two keys per row, by id and by
  name). The sidecar's deletes fail and are handed to the retry topic; the
  retry consumer takes them and cannot apply them. RSS of both processes is
  sampled every 100 ms: before, while the retries are pending, and while they
  drain after Redis returns; the drain time runs from SIGCONT until none of the
  keys exists any more.
* ``recovery``: 500 single-row tx/s (open loop, several writer processes);
  Redis down AND the broker frozen for the outage; Redis returns, the broker stays
  frozen until every key is consistent (so the outbox table is the only durable
  place the failures can have gone), then it returns too. Seconds from Redis's
  return until no key of a row due before it exists.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import threading
import time
import urllib.request
from typing import Any

from bench import models
from bench.common import ROOT, Env, Listen, RssSampler, mb, sync_point

RATE = 500


def _pid(service: str) -> int:
    return int((ROOT / ".services" / f"{service}.pid").read_text().split()[0])


def redis_down(env: Env) -> None:
    """Shut Redis down saving its keys (connections are refused until :func:`redis_up`).

    One ``SHUTDOWN SAVE``, not ``SAVE`` then ``SHUTDOWN NOSAVE``: a delete the sidecar
    makes between the two would be undone by the restart (seen: one key "stale")."""
    import redis

    with contextlib.suppress(redis.ConnectionError):  # the server closes it as it goes
        env.redis.shutdown(save=True)


def redis_up(env: Env) -> None:
    """Start Redis again on its port and directory: it loads the keys it held."""
    from tests.support import services

    services.start_all()
    (ROOT / ".services" / "redis" / "dump.rdb").unlink(missing_ok=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _metric(port: int, name: str) -> float:
    """Sum of every sample of *name* on ``/metrics`` (0 when absent or unreachable)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            text = reply.read().decode()
    except OSError:
        return 0.0
    total = 0.0
    for line in text.splitlines():
        if re.match(rf"(cachesync_)?{name}(\{{|\s)", line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _processes(
    env: Env, schema: str, policy: str = "default"
) -> tuple[Listen, Listen, int, int]:
    """``cachesync listen`` and ``cachesync retry`` on the Kafka retry path, with metrics."""
    bootstrap = env.urls["CACHESYNC_KAFKA_BOOTSTRAP"]
    ports = (_free_port(), _free_port())
    common = {"CACHESYNC_KAFKA_BOOTSTRAP": bootstrap}
    listen = Listen(
        env, schema, extra={**common, "CACHESYNC_METRICS_PORT": str(ports[0])}
    )
    retry = Listen(
        env,
        schema,
        extra={**common, "CACHESYNC_METRICS_PORT": str(ports[1])},
        command=("retry", "--session-timeout-ms", "6000", "--retry-policy", policy),
    )
    return listen, retry, ports[0], ports[1]


def _owed_left(env: Env, keys: list[str]) -> int:
    pipe = env.redis.pipeline(transaction=False)
    for first in range(0, len(keys), 1000):
        pipe.exists(*keys[first : first + 1000])
    return int(sum(pipe.execute()))


def _wait_stable(read: Any, at_least: float, timeout: float, still: float = 2.0) -> float:
    """Wait until ``read()`` is >= *at_least* and has not moved for *still* seconds."""
    deadline = time.monotonic() + timeout
    last, since = read(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
        elif now >= at_least and time.monotonic() - since >= still:
            break
    return float(last)


def pending(env: Env, retries: int) -> dict[str, Any]:
    """RSS of ``listen`` and ``retry`` while *retries* retry records wait for Redis (the
    sidecar hands off one per key: *retries* / 2 row changes, two keys each).

    The retry consumer runs ``--retry-policy patient``: with the default schedule
    (8 attempts, about 63 s of backoff) the first records are dead-lettered before
    the sidecar has handed off 100,000 (it hands off ~1,500 actions/s here)."""
    schema = f"bench_pending_{retries}"
    rows = retries // 2  # two keys per row change: by id and by name
    keys_pending = 2 * rows
    env.fresh_schema(schema, 1, rows + 1)
    owed = [models.key_by_id(schema, 0, i) for i in range(1, rows + 1)] + [
        f"{schema}:u0:by-name:user-{i}" for i in range(1, rows + 1)
    ]
    listen, retry, listen_port, retry_port = _processes(env, schema, policy="patient")
    result: dict[str, Any] = {"retries_pending": retries, "keys_pending": keys_pending}
    with listen, retry:
        listen.wait_streaming()
        sync_point(env, schema)
        time.sleep(5)  # the retry consumer joins its group (~3 s on tansu)
        pipe = env.redis.pipeline(transaction=False)
        for key in owed:
            pipe.set(key, "cached")
        pipe.execute()
        with RssSampler(listen.pid) as listen_rss, RssSampler(retry.pid) as retry_rss:
            time.sleep(1.0)
            before = (listen_rss.samples[-1][1], retry_rss.samples[-1][1])
            handed_before = _metric(listen_port, "handed_off_total")
            redis_down(env)
            frozen_at = time.monotonic()
            try:
                table = f"{schema}.{models.table_name(0)}"
                for first in range(1, rows + 1, 1000):
                    env.sql(
                        f"UPDATE {table} SET nickname = CONCAT(nickname, '!') "
                        f"WHERE id >= {first} AND id < {first + 1000}"
                    )
                # Every change read and handed off (the sidecar's count stops moving).
                handed = _wait_stable(
                    lambda: _metric(listen_port, "handed_off_total"), handed_before + 1, 120
                )
                time.sleep(3.0)  # the retry consumer takes them from the topic meanwhile
                result["retry_backlog"] = _metric(retry_port, "retry_backlog")
                handed_seconds = time.monotonic() - frozen_at
                pending_rss = (listen_rss.samples[-1][1], retry_rss.samples[-1][1])
                peak_pending = (listen_rss.peak_mb, retry_rss.peak_mb)
            finally:
                restart = time.monotonic()
                redis_up(env)
            returned = time.monotonic()
            result["seconds_to_restart_redis"] = returned - restart
            drained = None
            while time.monotonic() - returned < 300:
                if _owed_left(env, owed) == 0:
                    drained = time.monotonic() - returned
                    break
                time.sleep(0.1)
            time.sleep(1.0)
        left = _owed_left(env, owed)
        dead = _metric(retry_port, "dead_letters_total")
        result["retry_attempts"] = _metric(retry_port, "retries_total")
        result["retry_succeeded"] = _metric(retry_port, "retry_succeeded_total")
        result["listen_keys_deleted"] = _metric(listen_port, "keys_deleted_total")
    env.drop(schema)
    result.update(
        {
            "handed_off_actions": handed - handed_before,
            "seconds_down_until_handed_off": handed_seconds,
            "listen_rss_mb": {
                "before": before[0] / 2**20,
                "pending": pending_rss[0] / 2**20,
                "peak_while_pending": peak_pending[0],
                "peak": listen_rss.peak_mb,
            },
            "retry_rss_mb": {
                "before": before[1] / 2**20,
                "pending": pending_rss[1] / 2**20,
                "peak_while_pending": peak_pending[1],
                "peak": retry_rss.peak_mb,
            },
            "seconds_to_drain": drained,
            "keys_left": left,
            "dead_letters": dead,
            "listen_rss_series_mb": [
                (round(t, 2), m) for (t, _), m in zip(
                    listen_rss.samples, mb(r for _, r in listen_rss.samples), strict=True
                )
            ],
            "retry_rss_series_mb": [
                (round(t, 2), m) for (t, _), m in zip(
                    retry_rss.samples, mb(r for _, r in retry_rss.samples), strict=True
                )
            ],
        }
    )
    lr, rr = result["listen_rss_mb"], result["retry_rss_mb"]
    print(
        f"  {retries:>7,} retries ({keys_pending:,} keys) pending: listen RSS {lr['before']:.1f} -> {lr['pending']:.1f} MB "
        f"(peak {lr['peak']:.1f}), retry RSS {rr['before']:.1f} -> {rr['pending']:.1f} MB "
        f"(peak {rr['peak']:.1f}); drained "
        + (f"{drained:.1f} s" if drained is not None else "NOT within 300 s")
        + f" after Redis returned ({left} keys left, {dead:.0f} dead letters)",
        flush=True,
    )
    return result


def recovery(env: Env, outage: float) -> dict[str, Any]:
    """Redis and the broker frozen for *outage* s at 500 tx/s; seconds to consistency."""
    from bench.latency import write_open_loop

    schema = "bench_recovery_kafka"
    warm, tail = 3.0, 15.0
    total = int(RATE * (warm + outage + tail))
    env.fresh_schema(schema, 1, total + 2)
    keys = [models.key_by_id(schema, 0, i) for i in range(total + 2)]
    pipe = env.redis.pipeline(transaction=False)
    for key in keys:
        pipe.set(key, "cached")
    pipe.execute()
    listen, retry, listen_port, retry_port = _processes(env, schema)
    kafka_pid = _pid("kafka")
    table = f"{schema}.{models.table_name(0)}"
    out: dict[str, Any] = {}

    def writer() -> None:
        out["sent"], out["achieved"], out["late"] = write_open_loop(env, table, total, RATE, 2)

    print(
        f"\nrecovery after a {outage:.0f} s Redis + Kafka outage at {RATE} tx/s "
        "(listen + retry; Kafka stays frozen until consistent):"
    )
    consistent = None
    with listen, retry:
        listen.wait_streaming()
        sync_point(env, schema)
        time.sleep(5)  # the retry consumer joins its group
        thread = threading.Thread(target=writer, daemon=True)
        started = time.perf_counter()
        thread.start()
        time.sleep(warm)
        os.kill(kafka_pid, signal.SIGSTOP)
        redis_down(env)
        try:
            time.sleep(outage)
        finally:
            redis_up(env)
        returned = time.perf_counter()
        try:
            # Rows due before Redis returned (the writers are open loop: row n is due at
            # started + n / RATE; the +0.05 s is their start delay).
            owed = keys[1 : int((returned - started - 0.05) * RATE) + 1]
            while time.perf_counter() - returned < 120:
                if _owed_left(env, owed) == 0:
                    consistent = time.perf_counter() - returned
                    break
                time.sleep(0.1)
            parked = _metric(listen_port, "outbox_pending_total")
            relayed = _metric(retry_port, "outbox_relayed_total")
        finally:
            os.kill(kafka_pid, signal.SIGCONT)
        thread.join()
        time.sleep(2.0)
        left = _owed_left(env, owed)
        everything_left = _owed_left(env, keys[1 : total + 1])
        handed = _metric(listen_port, "handed_off_total")
        log = listen.log.read_text(errors="replace")
    env.drop(schema)
    result = {
        "outage_seconds": outage,
        "rate": RATE,
        "achieved_rate": round(out.get("achieved", 0.0)),
        "rows_due_before_return": len(owed),
        "seconds_to_consistent": consistent,
        "keys_left": left,
        "keys_left_after_kafka_returned": everything_left,
        "handed_off_actions": handed,
        "outbox_pending_actions": parked,
        "outbox_relayed": relayed,
        "listen_log_lines_naming_the_outbox": log.lower().count("outbox"),
    }
    if consistent is None:
        result["summary"] = (
            f"after a {outage:.0f} s Redis + Kafka outage at {RATE} tx/s (achieved "
            f"{result['achieved_rate']}), {left} of {len(owed):,} keys were still stale 120 s "
            "after Redis returned with Kafka still frozen"
        )
    else:
        result["summary"] = (
            f"after a {outage:.0f} s Redis + Kafka outage at {RATE} tx/s (achieved "
            f"{result['achieved_rate']}), with Kafka still frozen, every one of the "
            f"{len(owed):,} keys of rows due before Redis returned was deleted {consistent:.1f} s "
            f"after its return ({parked:,.0f} actions parked in the outbox, {relayed:,.0f} "
            "outbox entries relayed)"
        )
    print("  " + result["summary"], flush=True)
    return result


def run(env: Env, quick: bool, outage: float) -> dict[str, Any]:
    """Both scenarios: pending retries (1,000 and 100,000; 1,000 and 10,000 with --quick)."""
    print("\npending retries (Redis down; listen + retry on the Kafka retry path):")
    sizes = (1_000, 10_000) if quick else (1_000, 100_000)
    return {
        "pending": [pending(env, n) for n in sizes],
        "recovery_kafka_frozen": recovery(env, outage),
    }


def main(argv: list[str] | None = None) -> int:
    """One scenario, for iterating: ``python -m bench.retries pending 1000`` or
    ``python -m bench.retries recovery 30``."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=("pending", "recovery"))
    parser.add_argument("size", type=float, help="keys pending, or outage seconds")
    args = parser.parse_args(argv)
    env = Env()
    if args.scenario == "pending":
        found = pending(env, int(args.size))
        found.pop("listen_rss_series_mb")
        found.pop("retry_rss_series_mb")
    else:
        found = recovery(env, args.size)
    print(json.dumps(found, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
