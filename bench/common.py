"""What every bench scenario shares: the private services, SQL, a ``cachesync listen``
child process, the raw python-mysql-replication read of a binlog range, RSS sampling.

The sidecar is measured as users run it: ``python -m cachesync.cli listen`` with
the database checkpoint (no ``CACHESYNC_CHECKPOINT_URL``) and default settings
unless a scenario names a batch preset.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pymysql
import redis
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.event import XidEvent
from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

from bench import models
from cachesync.connections import mysql_params

ROOT = Path(__file__).resolve().parents[1]
LOGS = ROOT / ".services" / "bench-logs"
_server_ids = itertools.count(random.randint(3_000_000, 3_900_000))


def server_id() -> int:
    """A replica id of its own for each reader (two readers with one id fail: error 4052)."""
    return next(_server_ids)


class Env:
    """The private services' URLs and clients (started by tests/support/services.py)."""

    def __init__(self) -> None:
        from tests.support import services

        self.urls = services.start_all()
        self.mysql_url = self.urls["CACHESYNC_MYSQL_URL"]
        self.redis_url = self.urls["CACHESYNC_REDIS_URL"]
        self.es_url = self.urls["CACHESYNC_ES_URL"]
        self.root = mysql_params(self.mysql_url)
        self.root.pop("database", None)
        self.redis = redis.Redis.from_url(self.redis_url)
        self._conn: Any = None

    def es(self) -> Any:
        from elasticsearch import Elasticsearch

        return Elasticsearch(self.es_url, request_timeout=60)

    def connect(self, **options: Any) -> Any:
        return pymysql.connect(**self.root, autocommit=True, **options)

    def sql(self, statement: str) -> list[tuple[Any, ...]]:
        if self._conn is None:
            self._conn = self.connect()
        with self._conn.cursor() as cur:
            cur.execute(statement)
            return list(cur.fetchall())

    def master_status(self) -> tuple[str, int]:
        row = self.sql("SHOW MASTER STATUS")[0]
        return str(row[0]), int(row[1])

    def url_for(self, schema: str) -> str:
        parts = urlsplit(self.mysql_url)
        return parts._replace(path="/" + schema).geturl()

    def fresh_schema(self, schema: str, tables: int, rows: int) -> None:
        """A new database with *tables* watched-shape tables of *rows* rows each."""
        self.sql(f"DROP DATABASE IF EXISTS {schema}")
        self.sql(f"CREATE DATABASE {schema}")
        for i in range(tables):
            table = f"{schema}.{models.table_name(i)}"
            self.sql(models.DDL.format(table=table))
            self.insert(table, rows)

    def insert(self, table: str, rows: int) -> None:
        for first in range(0, rows, 5000):
            values = ", ".join(
                f"({i}, 'user-{i}', 'nick-{i}', 'user{i}@example.com')"
                for i in range(first, min(first + 5000, rows))
            )
            self.sql(f"INSERT INTO {table} VALUES {values}")

    def drop(self, schema: str) -> None:
        self.sql(f"DROP DATABASE IF EXISTS {schema}")
        self.redis.flushdb()


class Listen:
    """``cachesync listen`` (or another *command*) as a child process watching *schema*
    (bench/models.py)."""

    def __init__(
        self,
        env: Env,
        schema: str,
        *,
        tables: int = 1,
        projection: bool = False,
        batch: str | None = None,
        extra: dict[str, str] | None = None,
        command: tuple[str, ...] = ("listen",),
    ) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        self.command = command
        self.log = LOGS / f"{schema}-{command[0]}.log"
        self.environ = dict(os.environ)
        self.environ.pop("CACHESYNC_KAFKA_BOOTSTRAP", None)
        self.environ.pop("CACHESYNC_CHECKPOINT_URL", None)
        self.environ.update(
            {
                "PYTHONPATH": str(ROOT) + os.pathsep + self.environ.get("PYTHONPATH", ""),
                "BENCH_SCHEMA": schema,
                "BENCH_TABLES": str(tables),
                "BENCH_PROJECTION": "1" if projection else "0",
                "CACHESYNC_MODELS": "bench.models",
                "CACHESYNC_MYSQL_URL": env.url_for(schema),
                "CACHESYNC_REDIS_URL": env.redis_url,
                "CACHESYNC_NAME": schema,
                "CACHESYNC_SERVER_ID": str(server_id()),
            }
        )
        if projection:
            self.environ["CACHESYNC_ES_URL"] = env.es_url
        else:
            self.environ.pop("CACHESYNC_ES_URL", None)
        if batch is not None:
            self.environ["CACHESYNC_BATCH"] = batch
        else:
            self.environ.pop("CACHESYNC_BATCH", None)
        self.environ.update(extra or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.log.write_bytes(b"")

    def start(self) -> Listen:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cachesync.cli", *self.command],
                env=self.environ,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_streaming(self, timeout: float = 60.0) -> None:
        wait_for(
            lambda: "streaming binlog from" in self._output(), timeout, "the sidecar to stream"
        )

    def _output(self) -> str:
        if self.proc is not None and self.proc.poll() is not None:
            raise SystemExit(f"cachesync listen exited ({self.proc.returncode}); log: {self.log}")
        return self.log.read_text(errors="replace")

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.pid, signal.SIGCONT)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self) -> Listen:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)


def sync_point(env: Env, schema: str, table: int = 0, row_id: int = 0, timeout: float = 60) -> None:
    """Return once the sidecar applied an update of row *row_id* made now.

    Repeated every second: a sidecar without a checkpoint starts at the position
    current when it first connects, so an update written just before is not seen."""
    key = models.key_by_id(schema, table, row_id)
    env.redis.set(key, "sync")
    deadline = time.monotonic() + timeout
    while env.redis.exists(key):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for a sync point")
        env.sql(
            f"UPDATE {schema}.{models.table_name(table)} SET nickname = CONCAT(nickname, '+') "
            f"WHERE id = {row_id}"
        )
        with contextlib.suppress(SystemExit):
            wait_for(lambda: not env.redis.exists(key), 1.0, "a sync point", poll=0.01)


def raw_read(
    env: Env,
    schema: str,
    tables: Sequence[str],
    start: tuple[str, int],
    end: tuple[str, int],
    *,
    per_key: Callable[[str, dict[str, Any]], Sequence[str]] | None = None,
) -> tuple[int, float]:
    """The stock library reading (and decoding) *tables*' rows in [start, end): rows, seconds.

    *per_key* (table, row of the library -> keys): the naive invalidator, which also
    sends one Redis ``DELETE`` round trip per key of every row (what a hand-written
    binlog consumer does)."""
    reader = BinLogStreamReader(
        connection_settings=dict(env.root),
        server_id=server_id(),
        resume_stream=True,
        blocking=False,
        log_file=start[0],
        log_pos=start[1],
        only_events=[WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent, XidEvent],
        only_tables=list(tables),
        only_schemas=[schema],
        is_mariadb=False,
        enable_logging=False,
    )
    rows = 0
    started = time.perf_counter()
    try:
        for event in reader:
            if not isinstance(event, XidEvent):
                rows += len(event.rows)
                if per_key is not None:
                    for row in event.rows:
                        for key in per_key(event.table, row):
                            env.redis.delete(key)
            if (reader.log_file, reader.log_pos) >= end:
                break
    finally:
        reader.close()
    return rows, time.perf_counter() - started


class RssSampler:
    """Samples a process's resident set size every *interval* seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        import psutil

        self._proc = psutil.Process(pid)
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()

    def _run(self) -> None:
        while not self._done.is_set():
            try:
                self.samples.append((time.monotonic() - self._t0, self._proc.memory_info().rss))
            except Exception:
                return
            self._done.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return max((r for _, r in self.samples), default=0) / 2**20


def mb(values: Iterable[int]) -> list[float]:
    return [v / 2**20 for v in values]
