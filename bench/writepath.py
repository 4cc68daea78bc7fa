"""Benchmark: what cachesync's after-commit hooks cost next to the hand-written delete they replace.

Run from the repository root (the private services are started if needed)::

    .venv/bin/python bench/writepath.py [--rounds 7] [--commits 400]

Two loops per ORM, in one process, against the private MariaDB and Redis,
interleaved (within each round the loops alternate every 25 commits) so that
the load of a shared machine falls on both alike:

* SQLAlchemy, baseline: ``item.name = ...; session.commit(); redis.delete(key)``
  on a model that is not declared; cachesync: the same table through a declared
  model (``keys=["bench:wp:item:{id}"]``) and ``session.commit()`` alone, the
  hooks installed on that session's sessionmaker, which delete the key.
* Django, baseline: ``instance.save(); redis.delete(key)`` in autocommit on a
  model without a declaration; cachesync: ``instance.save()`` on a registered
  model of the same table.

The baseline deletes with the same redis-py client kind cachesync uses (a plain
``DELETE``, not Django's cache API, which would make the baseline dearer and
cachesync look better). Each round reports tx/s of both loops; the figures are
the medians over rounds, ratio first (``cachesync / baseline``; 0.95 means 5%
slower). Printed, never asserted: the tests assert guarantees, this measures.

``run()`` returns the figures as a dict so that a suite (``python -m bench``) can
import this module and collect them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

__all__ = ["main", "run"]

DATABASE = "cachesync_bench_writepath"
TABLE = "bench_wp_item"
REDIS_DB = 9
KEY = "bench:wp:item:{id}"


def _median_figures(baseline: list[float], synced: list[float]) -> dict[str, Any]:
    ratios = [s / b for b, s in zip(baseline, synced, strict=True)]
    ratio = statistics.median(ratios)
    return {
        "ratio": round(ratio, 4),
        "slower_pct": round((1 - ratio) * 100, 2),
        "baseline_tx_s": round(statistics.median(baseline), 1),
        "cachesync_tx_s": round(statistics.median(synced), 1),
        "round_ratios": [round(r, 4) for r in ratios],
    }


def _timed(loop: Callable[[int], None], start: int, count: int) -> tuple[float, float]:
    """Wall and CPU seconds of *count* iterations of *loop*."""
    cpu, started = time.process_time(), time.perf_counter()
    for i in range(start, start + count):
        loop(i)
    return time.perf_counter() - started, time.process_time() - cpu


def _interleave(
    baseline: Callable[[int], None],
    synced: Callable[[int], None],
    rounds: int,
    commits: int,
    label: str,
    say: Callable[[str], None],
    block: int = 25,
) -> dict[str, Any]:
    """tx/s of both loops per round; within a round they alternate every *block* commits.

    This machine is shared: a burst of someone else's load lasts a fraction of a
    second to seconds. Short alternating blocks let a burst fall on both loops
    alike, so the per-round ratio measures cachesync, not the neighbours.
    """
    _timed(baseline, 0, commits // 4)  # warm both paths (connections, statement caches)
    _timed(synced, 0, commits // 4)
    base_rates, sync_rates = [], []
    base_cpu: list[float] = []
    sync_cpu: list[float] = []
    for n in range(rounds):
        spent = {"baseline": 0.0, "synced": 0.0}
        cpu = {"baseline": 0.0, "synced": 0.0}
        done = 0
        while done < commits:
            count = min(block, commits - done)
            pair = [("baseline", baseline), ("synced", synced)]
            if (done // block + n) % 2:
                pair.reverse()  # alternate which loop goes first
            for name, loop in pair:
                wall, used = _timed(loop, done, count)
                spent[name] += wall
                cpu[name] += used
            done += count
        b, s = commits / spent["baseline"], commits / spent["synced"]
        base_rates.append(b)
        sync_rates.append(s)
        base_cpu.append(cpu["baseline"] / commits * 1e6)
        sync_cpu.append(cpu["synced"] / commits * 1e6)
        say(f"  {label} round {n + 1}: baseline {b:7.1f} tx/s  cachesync {s:7.1f} tx/s  "
            f"ratio {s / b:.3f}  (CPU {base_cpu[-1]:.0f} vs {sync_cpu[-1]:.0f} us/commit)")  # fmt: skip
    figures = _median_figures(base_rates, sync_rates)
    # CPU per commit (this process, all threads): the part of the cost cachesync's code
    # adds, free of the I/O waits that a loaded machine stretches.
    figures["baseline_cpu_us"] = round(statistics.median(base_cpu), 1)
    figures["cachesync_cpu_us"] = round(statistics.median(sync_cpu), 1)
    # The same per round, as a difference: the wall ratio moves with the neighbours' load
    # (a busy machine stretches both loops' I/O waits and flatters the ratio), this less.
    figures["overhead_cpu_us"] = round(
        statistics.median(s - b for b, s in zip(base_cpu, sync_cpu, strict=True)), 1
    )
    return figures


# ---------------------------------------------------------------------------------------------
# SQLAlchemy
# ---------------------------------------------------------------------------------------------


def _sqlalchemy(
    mysql_url: str, redis_url: str, rounds: int, commits: int, say: Callable[[str], None]
) -> dict[str, Any]:
    import redis
    from sqlalchemy import Integer, MetaData, String, create_engine
    from sqlalchemy.orm import DeclarativeBase, mapped_column, sessionmaker

    from cachesync import Registry, Sync, configure
    from cachesync.connections import sqlalchemy_url
    from cachesync.contrib.sqlalchemy import CacheSyncMixin, install, uninstall
    from cachesync.fastpath import fast_path

    class Plain(DeclarativeBase):
        metadata = MetaData()

    class Synced(DeclarativeBase):
        metadata = MetaData()

    class PlainItem(Plain):
        __tablename__ = TABLE
        id = mapped_column(Integer, primary_key=True, autoincrement=False)
        name = mapped_column(String(64), nullable=False)

    class SyncedItem(CacheSyncMixin, Synced):
        __tablename__ = TABLE
        __cachesync_registry__ = Registry()
        id = mapped_column(Integer, primary_key=True, autoincrement=False)
        name = mapped_column(String(64), nullable=False)
        __cachesync__ = Sync(keys=[KEY])

    engine = create_engine(f"{sqlalchemy_url(mysql_url)}/{DATABASE}", pool_size=2)
    Plain.metadata.drop_all(engine)
    Plain.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(PlainItem.__table__.insert(), [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])

    client = redis.Redis.from_url(redis_url)
    plain_maker = sessionmaker(engine)
    synced_maker = sessionmaker(engine)
    # The process-wide fast path, built from the settings, as an application gets it.
    configure(redis_url=redis_url)
    fast_path.configure()
    install(synced_maker)
    plain_session = plain_maker()
    synced_session = synced_maker()
    plain_item = plain_session.get(PlainItem, 1)
    synced_item = synced_session.get(SyncedItem, 2)
    assert plain_item is not None and synced_item is not None
    plain_key = KEY.format(id=1)

    def baseline(i: int) -> None:
        plain_item.name = f"n{i}"
        plain_session.commit()
        client.delete(plain_key)

    def synced(i: int) -> None:
        synced_item.name = f"n{i}"
        synced_session.commit()

    # The hooks must really delete: a key set beforehand is gone after one commit.
    client.set(KEY.format(id=2), b"x")
    synced(-1)
    if client.exists(KEY.format(id=2)):
        raise RuntimeError("the SQLAlchemy hooks did not delete the key: nothing to measure")
    try:
        return _interleave(baseline, synced, rounds, commits, "sqlalchemy", say)
    finally:
        plain_session.close()
        synced_session.close()
        uninstall(synced_maker)
        Plain.metadata.drop_all(engine)
        engine.dispose()


# ---------------------------------------------------------------------------------------------
# Django
# ---------------------------------------------------------------------------------------------


def _django_setup(host: str, port: int, redis_url: str) -> None:
    import django
    import pymysql
    from django.conf import settings

    pymysql.install_as_MySQLdb()
    if settings.configured:
        raise RuntimeError("bench/writepath.py configures Django itself; run it in a fresh process")
    settings.configure(
        SECRET_KEY="cachesync-bench",
        USE_TZ=True,
        TIME_ZONE="UTC",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        INSTALLED_APPS=["cachesync.contrib.django"],
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.mysql",
                "NAME": DATABASE,
                "HOST": host,
                "PORT": port,
                "USER": "root",
                "PASSWORD": "",
                "OPTIONS": {"charset": "utf8mb4"},
            }
        },
        CACHESYNC={"REDIS_URL": redis_url},
        LOGGING_CONFIG=None,
    )
    django.setup()


def _django(
    host: str, port: int, redis_url: str, rounds: int, commits: int, say: Callable[[str], None]
) -> dict[str, Any]:
    import redis

    _django_setup(host, port, redis_url)
    from django.db import connection, models

    from cachesync.contrib.django import register, unregister

    class Meta:
        app_label = "cachesync"
        db_table = TABLE

    def model(name: str) -> Any:
        attrs = {
            "__module__": __name__,
            "Meta": type("Meta", (), dict(vars(Meta), managed=False)),
            "id": models.IntegerField(primary_key=True),
            "name": models.CharField(max_length=64),
        }
        return type(name, (models.Model,), attrs)

    plain_model, synced_model = model("BenchPlainItem"), model("BenchSyncedItem")
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {TABLE}")
        cursor.execute(f"CREATE TABLE {TABLE} (id INT PRIMARY KEY, name VARCHAR(64) NOT NULL)")
        cursor.execute(f"INSERT INTO {TABLE} VALUES (1, 'a'), (2, 'b')")
    register(synced_model, keys=["bench:wp:item:{pk}"])
    client = redis.Redis.from_url(redis_url)
    plain = plain_model.objects.get(pk=1)
    synced_row = synced_model.objects.get(pk=2)
    plain_key = KEY.format(id=1)

    def baseline(i: int) -> None:
        plain.name = f"n{i}"
        plain.save()
        client.delete(plain_key)

    def synced(i: int) -> None:
        synced_row.name = f"n{i}"
        synced_row.save()

    client.set(KEY.format(id=2), b"x")
    synced(-1)
    if client.exists(KEY.format(id=2)):
        raise RuntimeError("the Django hooks did not delete the key: nothing to measure")
    try:
        return _interleave(baseline, synced, rounds, commits, "django", say)
    finally:
        unregister(synced_model)
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {TABLE}")
        connection.close()


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


def run(
    rounds: int = 7,
    commits: int = 400,
    *,
    orms: tuple[str, ...] = ("sqlalchemy", "django"),
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measure the write-path overhead; returns ``{orm: figures}`` plus the run's parameters.

    Starts the private services if they are not running. Django is configured
    in this process (once), so call this at most once per process with
    ``"django"`` in *orms*.
    """
    import pymysql
    from tests.support import services

    services.start_all()
    with pymysql.connect(host=services.HOST, port=services.MARIADB_PORT, user="root") as conn:
        conn.cursor().execute(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
    mysql_root = f"mysql://root@{services.HOST}:{services.MARIADB_PORT}"
    redis_url = f"redis://{services.HOST}:{services.REDIS_PORT}/{REDIS_DB}"
    figures: dict[str, Any] = {"rounds": rounds, "commits_per_round": commits}
    if "sqlalchemy" in orms:
        figures["sqlalchemy"] = _sqlalchemy(mysql_root, redis_url, rounds, commits, say)
    if "django" in orms:
        figures["django"] = _django(
            services.HOST, services.MARIADB_PORT, redis_url, rounds, commits, say
        )
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--commits", type=int, default=400, help="commits per loop per round")
    parser.add_argument("--orm", choices=("sqlalchemy", "django"), action="append")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.commits < 4:
        print("bench/writepath.py: --rounds must be >= 1 and --commits >= 4", file=sys.stderr)
        return 2
    figures = run(args.rounds, args.commits, orms=tuple(args.orm or ("sqlalchemy", "django")))
    print()
    for orm in ("sqlalchemy", "django"):
        f = figures.get(orm)
        if f is None:
            continue
        print(f"{orm:10}  ratio {f['ratio']:.3f} ({f['slower_pct']:+.1f}% slower)  "
              f"baseline {f['baseline_tx_s']:7.1f} tx/s  cachesync {f['cachesync_tx_s']:7.1f} tx/s"
              f"  CPU {f['baseline_cpu_us']:.0f} vs {f['cachesync_cpu_us']:.0f} us/commit"
              f" (+{f['overhead_cpu_us']:.0f})"
              f"  (median of {args.rounds} rounds)")  # fmt: skip
    if args.json:
        print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
