"""Benchmark: binlog -> Redis deletes, cachesync's sidecar vs python-mysql-replication alone.

Run from the repository root (the private services are started if needed)::

    .venv/bin/python bench/sidecar.py [--multi-rows 50000] [--single-rows 20000] [--repeat 3]

For each shape of workload the same binlog range is read three ways, in the same run:

* ``raw``: python-mysql-replication's stock ``BinLogStreamReader`` filtered to the
  table (``only_tables``/``only_schemas``), decoding every row (``event.rows``)
  and doing nothing else: the library's read rate, the ceiling the issue asks
  cachesync to reach within 85%.
* ``cachesync``: the real :class:`~cachesync.binlog.Sidecar` (leader lock, guards,
  batching, ``plan()``, one multi-key UNLINK per batch, a fsynced checkpoint per
  batch) from the start of the range until every change is applied and checkpointed.
* ``naive``: the stock reader plus one Redis ``DELETE`` round trip per key, as
  the events arrive (what a hand-written Canal ``EntryHandler`` does).

Shapes: UPDATEs in 1000-row transactions, and single-row autocommit UPDATEs.
Every update renames the user, so each row change invalidates four keys (id and
by-name, before and after). The keys exist in Redis before every run. Rates are
row changes per second, median of ``--repeat`` runs. This is not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pymysql  # noqa: E402
import redis  # noqa: E402
from pymysqlreplication import BinLogStreamReader  # noqa: E402
from pymysqlreplication.event import XidEvent  # noqa: E402
from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent  # noqa: E402
from tests.support import services  # noqa: E402

from cachesync import Registry, Sync, resolve  # noqa: E402
from cachesync.apply import Applier  # noqa: E402
from cachesync.binlog import FileCheckpointStore, ResumePoint, Sidecar, SidecarPolicy  # noqa: E402
from cachesync.connections import mysql_params  # noqa: E402
from cachesync.planning import plan_keys  # noqa: E402
from cachesync.policies import BatchPolicy  # noqa: E402
from cachesync.sinks import RedisSink  # noqa: E402

SCHEMA = "cachesync_bench"
PREFIX = "bench:"
COLUMNS = {
    "id": "id",
    "username": "user_name",
    "nickname": "nickname",
    "email": "email",
    "state": "state",
}
_server_ids = iter(range(880_001, 890_000))


def spec_registry() -> Registry:
    registry = Registry()
    registry.add(
        resolve(
            "bench.User",
            Sync(keys=[PREFIX + "user:{id}", PREFIX + "user:by-name:{username}"]),
            table="users",
            schema=SCHEMA,
            columns=COLUMNS,
            primary_key=["id"],
        )
    )
    return registry


class Workload:
    """Writes one shape of changes and remembers the binlog range they occupy."""

    def __init__(self, root: dict[str, Any], rows: int, shape: str) -> None:
        self.root = root
        self.rows = rows
        self.shape = shape
        self.start: tuple[str, int] = ("", 0)
        self.end: tuple[str, int] = ("", 0)
        self.keys: list[str] = []

    def _conn(self) -> Any:
        return pymysql.connect(**self.root, autocommit=True)

    def prepare(self) -> None:
        conn = self._conn()
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS {SCHEMA}")
            cur.execute(f"DROP TABLE IF EXISTS {SCHEMA}.users")
            cur.execute(
                f"CREATE TABLE {SCHEMA}.users (id INT PRIMARY KEY, user_name VARCHAR(64) NOT NULL, "
                "nickname VARCHAR(64) NOT NULL, email VARCHAR(128) NULL, state TINYINT NOT NULL)"
            )
            for first in range(0, self.rows, 5000):
                values = ", ".join(
                    f"({i}, 'user-{i}', 'nick-{i}', 'user{i}@example.com', 0)"
                    for i in range(first, min(first + 5000, self.rows))
                )
                cur.execute(f"INSERT INTO {SCHEMA}.users VALUES {values}")
            cur.execute("SHOW MASTER STATUS")
            self.start = tuple(cur.fetchone()[:2])  # type: ignore[assignment]
        started = time.monotonic()
        if self.shape == "1000-row transactions":
            with conn.cursor() as cur:
                for first in range(0, self.rows, 1000):
                    cur.execute(
                        f"UPDATE {SCHEMA}.users SET user_name = CONCAT('renamed-', id) "
                        f"WHERE id >= {first} AND id < {first + 1000}"
                    )
        else:
            with conn.cursor() as cur:
                for i in range(self.rows):
                    cur.execute(
                        f"UPDATE {SCHEMA}.users SET user_name = 'renamed-{i}' WHERE id = {i}"
                    )
        written = time.monotonic() - started
        with conn.cursor() as cur:
            cur.execute("SHOW MASTER STATUS")
            self.end = tuple(cur.fetchone()[:2])  # type: ignore[assignment]
        conn.close()
        self.keys = [f"{PREFIX}user:{i}" for i in range(self.rows)] + [
            f"{PREFIX}user:by-name:{n}-{i}" for i in range(self.rows) for n in ("user", "renamed")
        ]
        print(
            f"  wrote {self.rows} row changes ({self.shape}) in {written:.1f}s, binlog "
            f"{self.start[0]}:{self.start[1]} .. {self.end[0]}:{self.end[1]}",
            flush=True,
        )

    def reader(self) -> BinLogStreamReader:
        return BinLogStreamReader(
            connection_settings={k: v for k, v in self.root.items() if k != "database"},
            server_id=next(_server_ids),
            resume_stream=True,
            blocking=False,
            log_file=self.start[0],
            log_pos=self.start[1],
            only_events=[WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent, XidEvent],
            only_tables=["users"],
            only_schemas=[SCHEMA],
            is_mariadb=False,
            enable_logging=False,
        )

    def reached_end(self, reader: BinLogStreamReader) -> bool:
        return (reader.log_file, reader.log_pos) >= self.end  # type: ignore[no-any-return]


def run_raw(work: Workload, _redis: redis.Redis) -> int:
    reader = work.reader()
    rows = 0
    try:
        for event in reader:
            if not isinstance(event, XidEvent):
                rows += len(event.rows)
            if work.reached_end(reader):
                break
    finally:
        reader.close()
    return rows


def run_naive(work: Workload, client: redis.Redis) -> int:
    spec = spec_registry().tables()[0]
    reader = work.reader()
    rows = 0
    try:
        for event in reader:
            if not isinstance(event, XidEvent):
                for row in event.rows:
                    before = row.get("before_values")
                    after = row.get("after_values", row.get("values"))
                    keys = plan_keys(
                        spec,
                        spec.row_from_columns(before) if before else None,
                        spec.row_from_columns(after) if after else None,
                    )
                    for key in keys:
                        client.delete(key)
                    rows += 1
            if work.reached_end(reader):
                break
    finally:
        reader.close()
    return rows


def run_cachesync(work: Workload, client: redis.Redis) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        store = FileCheckpointStore(Path(tmp) / "checkpoint.json")
        store.save("bench", ResumePoint(*work.start).encode())
        sidecar = Sidecar(
            mysql=work.root,
            registry=spec_registry(),
            applier=Applier(RedisSink(client), None),
            store=store,
            name="bench",
            server_id=next(_server_ids),
            policy=SidecarPolicy(batch=BatchPolicy.DEFAULT, idle_checkpoint_bytes=0),
        )
        errors: list[BaseException] = []

        def target() -> None:
            try:
                sidecar.run()
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        # Done when every change is applied (its keys deleted, its batch checkpointed).
        while not errors and sidecar.rows < work.rows:
            time.sleep(0.0005)
        sidecar.stop()
        thread.join()
        if errors:
            raise errors[0]
        return sidecar.rows


def measure(
    name: str,
    fn: Callable[[Workload, redis.Redis], int],
    work: Workload,
    client: redis.Redis,
    repeat: int,
) -> float:
    rates = []
    for _ in range(repeat):
        pipe = client.pipeline(transaction=False)
        for key in work.keys:
            pipe.set(key, "cached")
        pipe.execute()
        started = time.perf_counter()
        rows = fn(work, client)
        elapsed = time.perf_counter() - started
        if rows != work.rows:
            raise SystemExit(f"{name}: read {rows} row changes, expected {work.rows}")
        if name != "raw":
            left = sum(
                client.exists(*work.keys[i : i + 1000]) for i in range(0, len(work.keys), 1000)
            )
            if left:
                raise SystemExit(f"{name}: {left} keys were not deleted")
        rates.append(rows / elapsed)
    rate = statistics.median(rates)
    print(
        f"  {name:10} {rate:10,.0f} rows/s   (runs: {', '.join(f'{r:,.0f}' for r in rates)})",
        flush=True,
    )
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--multi-rows", type=int, default=50_000)
    parser.add_argument("--single-rows", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    urls = services.start_all()
    root = mysql_params(urls["CACHESYNC_MYSQL_URL"])
    root.pop("database", None)
    client = redis.Redis.from_url(urls["CACHESYNC_REDIS_URL"])
    results = []
    for shape, rows in (
        ("1000-row transactions", args.multi_rows),
        ("single-row autocommit", args.single_rows),
    ):
        print(f"\n{shape}:", flush=True)
        work = Workload(root, rows, shape)
        work.prepare()
        raw = measure("raw", run_raw, work, client, args.repeat)
        ours = measure("cachesync", run_cachesync, work, client, args.repeat)
        naive = measure("naive", run_naive, work, client, args.repeat)
        results.append((shape, raw, ours, naive))

    print("\nrow changes/s, binlog -> Redis deletes (median of", args.repeat, "runs)")
    print(
        f"{'shape':24} {'raw read':>10} {'cachesync':>10} {'naive':>10} {'vs raw':>8} {'vs naive':>9}"
    )
    for shape, raw, ours, naive in results:
        print(
            f"{shape:24} {raw:10,.0f} {ours:10,.0f} {naive:10,.0f} {ours / raw:8.0%} {ours / naive:8.1f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
