"""Shared machinery of the binlog tests: a database per test, sidecars in threads or processes.

Every test gets its own database (so its own tables, keys, index and leader
lock) and its own replica ``server_id``. A *sync point* proves the sidecar has
applied everything written so far: a key of the sentinel row (id 0) is set, the
row is updated, and the test waits until the sidecar deleted the key; batches
are applied in binlog order, so everything before the sentinel is applied too.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pymysql
import pytest
import redis as redis_lib
from elasticsearch import Elasticsearch, NotFoundError, helpers

from cachesync.apply import Applier, FailureHandler, LoggingFailureHandler
from cachesync.binlog import FileCheckpointStore, Sidecar, SidecarPolicy
from cachesync.binlog.checkpoint import CheckpointStore
from cachesync.connections import mysql_params
from cachesync.policies import Backoff, BatchPolicy, ImmediateRetryPolicy
from cachesync.registry import Registry
from cachesync.sinks import RedisSink, SearchSink
from tests.integration.binlog import models
from tests.support import services as svc

ROOT = Path(__file__).resolve().parents[3]
_server_ids = itertools.count(random.randint(100_000, 2_000_000_000))


def next_server_id() -> int:
    """A replica id no other reader of this test session uses (pitfall: error 4052)."""
    return next(_server_ids)


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return parts._replace(path="/" + database).geturl()


@dataclass
class BinlogEnv:
    """One test's database, with clients for MariaDB (root), Redis and Elasticsearch."""

    schema: str
    root_url: str
    sidecar_url: str
    redis_url: str
    es_url: str
    tmp: Path
    redis: redis_lib.Redis
    es: Elasticsearch
    server_id: int = field(default_factory=next_server_id)
    _conn: Any = None
    _sentinel: int = 0

    # -- SQL ----------------------------------------------------------------------------------

    @property
    def root(self) -> dict[str, Any]:
        return mysql_params(self.root_url)

    @property
    def sidecar_params(self) -> dict[str, Any]:
        return mysql_params(self.sidecar_url)

    def connect(self, **options: Any) -> Any:
        return pymysql.connect(**self.root, autocommit=True, connect_timeout=5, **options)

    def sql(self, statement: str, args: Any = None) -> list[tuple[Any, ...]]:
        """Run one statement as root in autocommit mode; reconnects after a server restart."""
        for attempt in range(30):
            try:
                if self._conn is None:
                    self._conn = self.connect()
                with self._conn.cursor() as cur:
                    cur.execute(statement, args)
                    return list(cur.fetchall())
            except pymysql.err.OperationalError as exc:
                if exc.args[0] not in (2003, 2006, 2013) or attempt == 29:
                    raise
                self._conn = None
                time.sleep(0.5)
        raise AssertionError("unreachable")

    def transaction(self, statements: Sequence[str]) -> None:
        conn = self.connect()
        try:
            conn.begin()
            with conn.cursor() as cur:
                for statement in statements:
                    cur.execute(statement)
            conn.commit()
        finally:
            conn.close()

    def master_status(self) -> tuple[str, int]:
        row = self.sql("SHOW MASTER STATUS")[0]
        return str(row[0]), int(row[1])

    def create_users(self) -> None:
        self.sql(models.USERS_DDL)
        self.sql("INSERT INTO users VALUES (0, 'sentinel', 'sentinel-0', NULL, 0)")

    # -- model --------------------------------------------------------------------------------

    @property
    def index(self) -> str:
        return models.index_name(self.schema)

    def keys(self, user_id: int, username: str) -> list[str]:
        return models.user_keys(self.schema, user_id, username)

    def registry(self) -> Registry:
        return models.registry_for(self.schema)

    def rows(self) -> dict[int, dict[str, Any]]:
        cols = ["id", "user_name", "nickname", "email", "state"]
        return {
            int(r[0]): dict(zip(cols, r, strict=True))
            for r in self.sql(f"SELECT {', '.join(cols)} FROM users")
        }

    def expected_documents(self) -> dict[str, dict[str, Any]]:
        """The projection of the table as it is now."""
        return {
            str(r["id"]): {
                "username": r["user_name"],
                "nickname": r["nickname"],
                "email": r["email"],
            }
            for r in self.rows().values()
            if r["state"] == 0
        }

    def documents(self) -> dict[str, dict[str, Any]]:
        self.es.indices.refresh(index=self.index, ignore_unavailable=True)
        hits = helpers.scan(
            self.es, index=self.index, query={"query": {"match_all": {}}}, ignore_unavailable=True
        )
        return {hit["_id"]: hit["_source"] for hit in hits}

    def assert_index_matches_table(self) -> None:
        expected, actual = self.expected_documents(), self.documents()
        missing = sorted(set(expected) - set(actual), key=int)
        orphans = sorted(set(actual) - set(expected), key=int)
        stale = sorted((i for i in expected if i in actual and actual[i] != expected[i]), key=int)
        assert not (missing or orphans or stale), (
            f"index {self.index} differs from the table: {len(missing)} missing {missing[:10]}, "
            f"{len(orphans)} orphans {orphans[:10]}, {len(stale)} stale "
            f"{[(i, actual[i], expected[i]) for i in stale[:5]]}"
        )
        assert len(actual) == len(expected)

    def set_keys(self, keys: Sequence[str], value: str = "stale") -> None:
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.set(key, value)
        pipe.execute()

    def existing(self, keys: Sequence[str]) -> list[str]:
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.exists(key)
        return [k for k, n in zip(keys, pipe.execute(), strict=True) if n]

    def sync_point(self, timeout: float = 60.0) -> None:
        """Return once the sidecar applied every change committed before this call."""
        self._sentinel += 1
        key = self.keys(0, "sentinel")[0]
        self.redis.set(key, "sync")
        self.sql("UPDATE users SET nickname = %s WHERE id = 0", (f"sentinel-{self._sentinel}",))
        nickname = f"sentinel-{self._sentinel}"
        deadline = time.monotonic() + timeout

        def reached() -> bool:
            # The applier deletes keys before it writes documents: wait for both.
            if self.redis.exists(key):
                return False
            try:
                doc = self.es.get(index=self.index, id="0")
            except NotFoundError:
                return False
            return bool(doc["_source"].get("nickname") == nickname)

        while not reached():
            if time.monotonic() > deadline:
                raise AssertionError(f"the sidecar did not reach sync point {self._sentinel}")
            time.sleep(0.02)

    # -- sidecars -----------------------------------------------------------------------------

    def applier(self, *, redis: Any = None) -> Applier:
        return Applier(
            RedisSink(redis if redis is not None else self.redis),
            SearchSink(self.es),
            policy=ImmediateRetryPolicy(attempts=2, min_wait=0.01, max_wait=0.05),
        )

    def sidecar(
        self,
        *,
        registry: Registry | None = None,
        store: CheckpointStore | None = None,
        applier: Applier | None = None,
        on_failure: FailureHandler | None = None,
        batch: BatchPolicy | None = None,
        server_id: int | None = None,
        **policy: Any,
    ) -> Sidecar:
        defaults: dict[str, Any] = {
            "batch": batch or BatchPolicy(max_rows=500, max_delay_ms=20),
            "idle_checkpoint_bytes": 0,
            "idle_wait": 0.2,
            "handoff_backoff": Backoff(0.1, 0.5),
            "retry_backoff": Backoff(0.2, 1.0),
        }
        defaults.update(policy)
        return Sidecar(
            mysql=self.sidecar_params,
            registry=registry or self.registry(),
            applier=applier or self.applier(),
            on_failure=on_failure or LoggingFailureHandler(),
            store=store or FileCheckpointStore(self.tmp / "checkpoint.json"),
            name=self.schema,
            server_id=server_id or self.server_id,
            policy=SidecarPolicy(**defaults),
        )

    def settings_env(self, **extra: str) -> dict[str, str]:
        """Environment for a ``cachesync`` subprocess watching this database."""
        env = dict(os.environ)
        env.update(
            {
                "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
                "CACHESYNC_TEST_SCHEMA": self.schema,
                "CACHESYNC_MODELS": "tests.integration.binlog.models",
                "CACHESYNC_MYSQL_URL": self.sidecar_url,
                "CACHESYNC_REDIS_URL": self.redis_url,
                "CACHESYNC_ES_URL": self.es_url,
                "CACHESYNC_NAME": self.schema,
                "CACHESYNC_SERVER_ID": str(self.server_id),
                "CACHESYNC_CHECKPOINT_URL": f"file:{self.tmp / 'checkpoint.json'}",
                "CACHESYNC_BATCH": "low_latency",
            }
        )
        env.pop("CACHESYNC_KAFKA_BOOTSTRAP", None)
        env.update(extra)
        return env


@contextlib.contextmanager
def running(sidecar: Sidecar, *, wait_leading: bool = True) -> Iterator[list[BaseException]]:
    """Run *sidecar* in a thread; yields the list its exception (if any) lands in."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            sidecar.run()
        except BaseException as exc:  # handed to the test
            errors.append(exc)

    thread = threading.Thread(target=target, name="sidecar", daemon=True)
    thread.start()
    try:
        if wait_leading:
            deadline = time.monotonic() + 30
            while not sidecar.leading.is_set():
                if errors:
                    raise errors[0]
                assert time.monotonic() < deadline, "the sidecar did not start streaming"
                time.sleep(0.01)
        yield errors
    finally:
        sidecar.stop()
        thread.join(30)
        assert not thread.is_alive(), "the sidecar did not stop within 30 s"
    if errors and wait_leading:
        raise errors[0]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class FreezableProxy:
    """A TCP forwarder whose existing connections can be frozen: the socket stays open but
    no byte moves, as with a dead network path (no FIN, no RST)."""

    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (host, target_port)
        self.listener = socket.create_server((host, 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self._frozen: set[int] = set()
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.connections += 1
            number = self.connections
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst, number), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, number: int) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while number in self._frozen and not self._closed.is_set():
                    time.sleep(0.05)
                if self._closed.is_set():
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def freeze_existing(self) -> None:
        """Freeze every connection made so far; new ones flow normally."""
        self._frozen.update(range(1, self.connections + 1))

    def close(self) -> None:
        self._closed.set()
        self.listener.close()


_PROCESSES: list[SidecarProcess] = []


class SidecarProcess:
    """``python -m cachesync.cli listen`` as a child process, with its log in a file.

    Every instance is killed when the test's ``binlog_env`` fixture tears down, so a
    failing test never leaves a sidecar running.
    """

    def __init__(self, env: Mapping[str, str], log: Path, *args: str) -> None:
        _PROCESSES.append(self)
        self.env = dict(env)
        self.log = log
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> SidecarProcess:
        self.starts += 1
        with open(self.log, "ab") as out:
            out.write(f"\n----- start {self.starts} -----\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cachesync.cli", "listen", *self.args],
                env=self.env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 30.0, occurrences: int = 1) -> None:
        def seen() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None and self.output().count(text) < occurrences:
                raise AssertionError(f"sidecar exited ({self.proc.returncode}):\n{self.output()}")
            return self.output().count(text) >= occurrences

        wait_for(seen, timeout, f"{text!r} in the sidecar log")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def _create_database(url: str, schema: str) -> None:
    """CREATE DATABASE, retried while MariaDB restarts (a chaos test may be restarting it)."""
    params = {k: v for k, v in mysql_params(url).items() if k != "database"}
    deadline = time.monotonic() + 60
    while True:
        try:
            admin = pymysql.connect(**params, autocommit=True, connect_timeout=5)
            break
        except pymysql.err.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{schema}`")
    finally:
        admin.close()


@pytest.fixture
def binlog_env(
    request: pytest.FixtureRequest,
    services: dict[str, str],
    tmp_path: Path,
) -> Iterator[BinlogEnv]:
    """A fresh database ``csbl_<test>_<random>`` with the ``users`` table created."""
    name = request.node.name.split("[")[0].removeprefix("test_")[:28]
    schema = f"csbl_{name}_{uuid.uuid4().hex[:6]}".lower()
    root_url = _with_database(services["CACHESYNC_MYSQL_URL"], schema)
    sidecar_url = svc.sidecar_mysql_url(schema)
    client = redis_lib.Redis.from_url(services["CACHESYNC_REDIS_URL"], socket_timeout=5)
    es = Elasticsearch(services["CACHESYNC_ES_URL"], request_timeout=30)
    env = BinlogEnv(
        schema=schema,
        root_url=root_url,
        sidecar_url=sidecar_url,
        redis_url=services["CACHESYNC_REDIS_URL"],
        es_url=services["CACHESYNC_ES_URL"],
        tmp=tmp_path,
        redis=client,
        es=es,
    )
    _create_database(services["CACHESYNC_MYSQL_URL"], schema)
    env.create_users()
    try:
        yield env
    finally:
        while _PROCESSES:
            with contextlib.suppress(Exception):
                _PROCESSES.pop().kill()
        with contextlib.suppress(Exception):
            env.sql(f"DROP DATABASE IF EXISTS `{schema}`")
        with contextlib.suppress(Exception):
            es.indices.delete(index=env.index, ignore_unavailable=True)
        with contextlib.suppress(Exception):
            keys = list(client.scan_iter(match=models.key_prefix(schema) + "*", count=1000))
            for i in range(0, len(keys), 1000):
                client.unlink(*keys[i : i + 1000])
        client.close()
        es.close()
