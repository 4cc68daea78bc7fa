"""Commit -> key gone through the binlog path (``cachesync listen``), per batch preset.

Single-row autocommit UPDATEs at a steady rate; before each one the row's key
is SET, and its deletion is timed with Redis keyspace notifications
(``notify-keyspace-events Eg``; UNLINK reports as ``del``). The latency of one
transaction is the time from its COMMIT returning to the ``del`` event of its
key, both on this process's clock. Two paths are timed apart:

* the binlog path: plain SQL autocommit UPDATEs, ``cachesync listen`` deletes the
  keys (no after-commit hook anywhere);
* the fast path: the writers are SQLAlchemy sessions with cachesync's hooks
  installed (``install(sessionmaker)``) and no sidecar runs; each transaction is
  ``row.nickname = ...; session.flush(); session.commit()``, timed from just
  before ``commit()`` (the UPDATE is already on the server, as the binlog path's
  autocommit statement carries its own commit). The rows are loaded before the
  clock starts, so the loop holds only the commits.

The load is open-loop: transaction *n* is due at ``start + n / rate`` whatever
happened to the ones before it, and the due times are dealt round-robin to
``WRITERS`` writer processes, each with its own connection (one Python writer
on a loaded 2-core machine tops out near 600 single-row commits/s: the
round trip, not the server, is its limit). Each writer records the time it
sent each statement; the achieved rate and how far the writers fell behind
their schedule (p99 ``late_ms``) are reported beside the latencies, so a run
that did not hold the rate says so. ``time.perf_counter`` is CLOCK_MONOTONIC
on Linux: one clock for every process of the machine.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from bench import models
from bench.common import Env, Listen, sync_point

ROWS = 40_000
WRITERS = 4


def _orm_writer(
    params: dict[str, Any], redis_url: str, table: str, index: int, writers: int, total: int
) -> tuple[Any, Callable[[int], None], Callable[[], None]]:
    """A fast-path writer's session and its transaction *n* (declared like bench/models.py)."""
    from sqlalchemy import Integer, MetaData, String, create_engine
    from sqlalchemy.orm import DeclarativeBase, mapped_column, sessionmaker

    from cachesync import Registry, Sync, configure
    from cachesync.contrib.sqlalchemy import CacheSyncMixin, install
    from cachesync.fastpath import fast_path

    schema, _, name = table.partition(".")
    prefix = models.key_by_id(schema, 0, 0)[:-1]

    class Base(DeclarativeBase):
        metadata = MetaData(schema=schema)

    class User(CacheSyncMixin, Base):
        __tablename__ = name
        __cachesync_registry__ = Registry()
        id = mapped_column(Integer, primary_key=True, autoincrement=False)
        username = mapped_column("user_name", String(64))
        nickname = mapped_column(String(64))
        __cachesync__ = Sync(keys=[prefix + "{id}", prefix + "by-name:{username}"])

    engine = create_engine(
        "mysql+pymysql://{user}:{password}@{host}:{port}".format(
            user=params["user"], password=params.get("password") or "",
            host=params["host"], port=params["port"],
        )
    )  # fmt: skip
    maker = sessionmaker(engine, expire_on_commit=False)
    configure(redis_url=redis_url)
    fast_path.configure()
    install(maker)
    session = maker()
    ids = [n + 1 for n in range(index, total, writers)]
    rows = {}
    for first in range(0, len(ids), 1000):
        part = ids[first : first + 1000]
        rows.update({u.id: u for u in session.query(User).filter(User.id.in_(part))})
    session.commit()

    def prepare(n: int) -> None:
        rows[n + 1].nickname = f"n{n}"
        session.flush()

    return session, prepare, engine.dispose


def _writer(
    params: dict[str, Any],
    redis_url: str | None,
    table: str,
    index: int,
    writers: int,
    total: int,
    rate: float,
    ready: Any,
    start_at: Any,
    results: Any,
) -> None:
    """One writer process: every *writers*-th transaction of the schedule, open loop."""
    import pymysql

    sent: list[tuple[int, float, float]] = []
    if redis_url is None:
        conn = pymysql.connect(**params, autocommit=True)
        cur = conn.cursor()

        def prepare(n: int) -> None:
            pass

        def commit(n: int) -> None:
            cur.execute(f"UPDATE {table} SET nickname = 'n{n}' WHERE id = {n + 1}")

        close: Callable[[], None] = conn.close
    else:
        session, prepare, close = _orm_writer(params, redis_url, table, index, writers, total)

        def commit(n: int) -> None:
            session.commit()

    ready.put(index)
    while start_at.value == 0.0:
        time.sleep(0.001)
    started = start_at.value
    for n in range(index, total, writers):
        due = started + n / rate
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        prepare(n)
        # Timed from just before the commit is sent: the server commits somewhere
        # inside the round trip, and the delete can arrive before this process
        # even sees the reply (an upper bound, never < 0).
        now = time.perf_counter()
        commit(n)
        sent.append((n, now, now - due))
    close()
    results.put(sent)


def write_open_loop(
    env: Env,
    table: str,
    total: int,
    rate: float,
    writers: int = WRITERS,
    *,
    fast_path: bool = False,
) -> tuple[dict[int, float], float, list[float]]:
    """Run *total* single-row UPDATEs of *table* at *rate* tx/s from *writers* processes
    (*fast_path*: SQLAlchemy sessions with cachesync's hooks instead of plain SQL).

    Returns ``{n: send time}``, the achieved rate (transactions / span from the
    first due time to the last send) and every transaction's lateness (s)."""
    ctx = multiprocessing.get_context("spawn")
    redis_url = env.redis_url if fast_path else None
    ready, results = ctx.Queue(), ctx.Queue()
    start_at = ctx.Value("d", 0.0)
    procs = [
        ctx.Process(
            target=_writer,
            args=(dict(env.root), redis_url, table, i, writers, total, rate, ready, start_at,
                  results),
            daemon=True,
        )
        for i in range(writers)
    ]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.get(timeout=60)
    start_at.value = started = time.perf_counter() + 0.05
    sent: dict[int, float] = {}
    late: list[float] = []
    for _ in procs:
        for n, at, lateness in results.get(timeout=600):
            sent[n] = at
            late.append(lateness)
    for proc in procs:
        proc.join(10)
    span = max(sent.values()) - started if sent else 0.0
    return sent, (len(sent) / span if span > 0 else 0.0), late


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


FAST_PATH = "fast path (hooks, no sidecar)"


def run_one(
    env: Env, preset: str | None, rate: int, seconds: float, profile: bool = False
) -> dict[str, Any]:
    """One preset at one rate (*preset* ``FAST_PATH``: the after-commit hooks alone);
    *profile*: py-spy attached to the sidecar while it runs (it takes CPU from the same
    two cores: those latencies are not the figure)."""
    fast = preset == FAST_PATH
    schema = f"bench_lat_{'fast' if fast else preset or 'default'}_{rate}"
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
    table = f"{schema}.{models.table_name(0)}"
    total = min(int(rate * seconds), ROWS - 1)
    # Keys are set beforehand (one pipeline) so the loop holds only the commits.
    keys = [models.key_by_id(schema, 0, 1 + n).encode() for n in range(total)]
    with contextlib.ExitStack() as stack:
        listen = None
        if not fast:
            listen = stack.enter_context(Listen(env, schema, batch=preset))
            listen.wait_streaming()
            sync_point(env, schema)
        pipe = env.redis.pipeline(transaction=False)
        for key in keys:
            pipe.set(key, "cached")
        pipe.execute()
        profiler = None
        if profile and listen is not None:
            from bench.profile import Profiler

            profiler = Profiler(listen.pid, name="listen-latency")
        sent, achieved, late = write_open_loop(env, table, total, rate, fast_path=fast)
        if profiler is not None:
            profiler.finish()
        committed = {keys[n]: sent[n] for n in sorted(sent)}  # samples in schedule order
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
    result: dict[str, Any] = {
        "preset": preset or "default (adaptive)",
        "path": "fast" if fast else "binlog",
        "rate": rate,
        "achieved_rate": achieved,
        "writers": WRITERS,
        "late_ms": percentiles([x * 1000 for x in late]),
        "missing": len(committed) - len(latencies),
        "ms": percentiles(latencies),
        "samples_ms": latencies,
    }
    if profile and listen is not None:
        from bench.profile import LOGS, show, summary

        result["profile"] = summary(LOGS / "py-spy-listen-latency.txt")
        show(result["profile"])
    p = result["ms"]
    print(
        f"  {result['preset']:20} {rate:5} tx/s (achieved {achieved:6.0f}): p50 {p.get('p50', 0):6.1f}"
        f"  p95 {p.get('p95', 0):6.1f}  p99 {p.get('p99', 0):6.1f}  max {p.get('max', 0):7.1f} ms"
        f"  ({p['n']} samples, {result['missing']} missing; writers' p99 lateness "
        f"{result['late_ms'].get('p99', 0):.1f} ms)",
        flush=True,
    )
    return result


def run(env: Env, quick: bool) -> list[dict[str, Any]]:
    seconds = 5.0 if quick else 15.0
    print(f"\ncommit -> key gone, single-row transactions ({seconds:.0f}s per run):")
    results = []
    for rate in (200, 1000):
        for preset in (None, "low_latency", "throughput", FAST_PATH):
            results.append(run_one(env, preset, rate, seconds))
    return results


def main(argv: list[str] | None = None) -> int:
    """One run, for iterating: ``python -m bench.latency --rate 1000 [--preset low_latency]``."""
    import argparse

    global WRITERS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--preset", default=None, help=f"a batch preset, or 'fast' ({FAST_PATH})")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--writers", type=int, default=WRITERS)
    parser.add_argument("--profile", action="store_true", help="py-spy on the sidecar")
    args = parser.parse_args(argv)
    WRITERS = args.writers
    preset = FAST_PATH if args.preset == "fast" else args.preset
    run_one(Env(), preset, args.rate, args.seconds, profile=args.profile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
