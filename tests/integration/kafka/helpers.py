"""Shared pieces of the retry-path tests: a watched table, topics, a consumer thread, checks.

The table lives in the private MariaDB; its changes are turned into
:class:`RowChange` objects exactly as the binlog would deliver them (before and
after images read around each statement), planned with :func:`plan` and applied
by an :class:`Applier` whose failure handler is the real :class:`RetryQueue`.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pymysql
from elasticsearch import Elasticsearch, helpers
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from cachesync import (
    Action,
    Applier,
    ApplyReport,
    BinlogPosition,
    FailureHandler,
    Op,
    Projection,
    Registry,
    RetryPolicy,
    RowChange,
    Sync,
    plan,
    resolve,
)
from cachesync.apply import hand_off
from cachesync.kafka import RetryConsumer
from cachesync.registry import TableSpec
from cachesync.reread import Refresher, SqlRowReader
from cachesync.sinks import RedisSink, SearchSink

#: kafka-python settings that make a group join take ~3 s on tansu (SERVICES.md).
FAST_GROUP = {
    "session_timeout_ms": 6000,
    "heartbeat_interval_ms": 1000,
    "max_poll_interval_ms": 6000,
}

COLUMNS = {"id": "id", "name": "item_name", "state": "state", "score": "score"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def create_topics(bootstrap: str, *names: str, partitions: int = 1) -> None:
    """Create *names* explicitly (auto-created topics get 4 partitions on tansu)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="cachesync-tests")
    try:
        admin.create_topics(
            [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names]
        )
    finally:
        admin.close()


def mysql_connect(url: str) -> pymysql.connections.Connection[Any]:
    parts = urlsplit(url)
    return pymysql.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=parts.username or "root",
        password=parts.password or "",
        database=parts.path.lstrip("/") or None,
        autocommit=True,
        connect_timeout=5,
    )


class Positions:
    """Monotonic fake binlog positions: one per row change, like the sidecar's."""

    def __init__(self) -> None:
        self.n = 0
        self.lock = threading.Lock()

    def next(self) -> BinlogPosition:
        with self.lock:
            self.n += 1
            return BinlogPosition("mysql-bin.000001", 4 + self.n, 0)


@dataclass
class Items:
    """A watched table ``items_<hex>`` (attribute ``name`` is column ``item_name``).

    Keys: ``item:<tag>:{id}`` and ``item:<tag>:by-name:{name}``; documents in
    *index* for rows with ``state == 0``.
    """

    url: str
    index: str
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    positions: Positions = field(default_factory=Positions)

    def __post_init__(self) -> None:
        self.table = f"items_{self.tag}"
        self.conn = mysql_connect(self.url)
        self.lock = threading.Lock()
        with self.conn.cursor() as cur:
            cur.execute(
                f"CREATE TABLE `{self.table}` (id INT PRIMARY KEY, item_name VARCHAR(64) NOT NULL,"
                " state INT NOT NULL DEFAULT 0, score INT NOT NULL DEFAULT 0)"
            )
        self.spec = self.make_spec()
        self.registry = Registry()
        self.registry.add(self.spec)
        self.touched: set[str] = set()
        #: When set, every key a statement touches is cached (SET) before the statement
        #: commits, as an application reading the row would have: its delete must follow.
        self.cache: Any = None

    def make_spec(self) -> TableSpec:
        return resolve(
            f"tests.Item{self.tag}",
            Sync(
                keys=[f"item:{self.tag}:{{id}}", f"item:{self.tag}:by-name:{{name}}"],
                search=Projection(
                    index=self.index, fields=["name", "score"], when=lambda row: row["state"] == 0
                ),
            ),
            table=self.table,
            columns=COLUMNS,
            primary_key=["id"],
        )

    def drop(self) -> None:
        with contextlib.suppress(Exception), self.conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS `{self.table}`")
        self.conn.close()

    # -- writes that yield the RowChanges the binlog would carry ----------------------------

    def _rows(self, cur: Any, where: str, args: Sequence[Any] = ()) -> dict[int, dict[str, Any]]:
        cur.execute(
            f"SELECT id, item_name, state, score FROM `{self.table}` WHERE {where} FOR UPDATE", args
        )
        return {
            r[0]: {"id": r[0], "item_name": r[1], "state": r[2], "score": r[3]}
            for r in cur.fetchall()
        }

    def execute(
        self, sql: str, args: Sequence[Any], where: str, where_args: Sequence[Any]
    ) -> list[RowChange]:
        """Run one statement in a transaction; the changes of every row it touched."""
        with self.lock, self.conn.cursor() as cur:
            cur.execute("BEGIN")
            before = self._rows(cur, where, where_args)
            cur.execute(sql, args)
            after = self._rows(cur, where, where_args)
            # rows the statement left as they were produce no binlog event and stay valid
            changed = [pk for pk in set(before) | set(after) if before.get(pk) != after.get(pk)]
            self._fill_cache(
                [img for pk in changed for img in (before.get(pk), after.get(pk)) if img]
            )
            cur.execute("COMMIT")
        changes = []
        for pk in sorted(set(before) | set(after)):
            b, a = before.get(pk), after.get(pk)
            if b == a:
                continue
            op = Op.INSERT if b is None else Op.DELETE if a is None else Op.UPDATE
            changes.append(RowChange(op, None, self.table, b, a, self.positions.next()))
        for change in changes:
            for image in (change.before, change.after):
                if image is not None:
                    self.touched.update(self.keys_of(image))
        return changes

    def _fill_cache(self, images: Sequence[Mapping[str, Any]]) -> None:
        if self.cache is None or not images:
            return
        import redis

        with contextlib.suppress(redis.RedisError, OSError):  # Redis may be down: nothing cached
            self.cache.mset({k: "cached" for image in images for k in self.keys_of(image)})

    def insert(self, pk: int, name: str, state: int = 0, score: int = 0) -> list[RowChange]:
        return self.execute(
            f"INSERT INTO `{self.table}` (id, item_name, state, score) VALUES (%s, %s, %s, %s)",
            (pk, name, state, score),
            "id = %s",
            (pk,),
        )

    def update(self, pk: int, **values: Any) -> list[RowChange]:
        sets = ", ".join(f"{COLUMNS[k]} = %s" for k in values)
        return self.execute(
            f"UPDATE `{self.table}` SET {sets} WHERE id = %s",
            (*values.values(), pk),
            "id = %s",
            (pk,),
        )

    def delete(self, pk: int) -> list[RowChange]:
        return self.execute(f"DELETE FROM `{self.table}` WHERE id = %s", (pk,), "id = %s", (pk,))

    def bulk_update(self, low: int, high: int, delta: int) -> list[RowChange]:
        return self.execute(
            f"UPDATE `{self.table}` SET score = score + %s WHERE id BETWEEN %s AND %s",
            (delta, low, high),
            "id BETWEEN %s AND %s",
            (low, high),
        )

    def bulk_delete(self, low: int, high: int) -> list[RowChange]:
        return self.execute(
            f"DELETE FROM `{self.table}` WHERE id BETWEEN %s AND %s",
            (low, high),
            "id BETWEEN %s AND %s",
            (low, high),
        )

    # -- expectations -----------------------------------------------------------------------

    def keys_of(self, image: Mapping[str, Any]) -> list[str]:
        return [f"item:{self.tag}:{image['id']}", f"item:{self.tag}:by-name:{image['item_name']}"]

    def rows(self) -> dict[int, dict[str, Any]]:
        with self.lock, self.conn.cursor() as cur:
            cur.execute(f"SELECT id, item_name, state, score FROM `{self.table}`")
            return {
                r[0]: {"id": r[0], "item_name": r[1], "state": r[2], "score": r[3]}
                for r in cur.fetchall()
            }

    def expected_documents(self) -> dict[str, dict[str, Any]]:
        return {
            str(pk): {"name": r["item_name"], "score": r["score"]}
            for pk, r in self.rows().items()
            if r["state"] == 0
        }

    def plan(self, changes: Sequence[RowChange]) -> list[Action]:
        return [a for c in changes for a in plan(c, self.spec)]

    def random_change(self, rng: random.Random, ids: int) -> list[RowChange]:
        """A random insert, update (sometimes renaming: a key change), delete or bulk statement."""
        pk = rng.randrange(1, ids + 1)
        roll = rng.random()
        exists = self._exists(pk)
        if not exists:
            return self.insert(pk, f"n{pk}-{rng.randrange(10**6)}", rng.choice([0, 0, 1]))
        if roll < 0.45:
            return self.update(pk, score=rng.randrange(1000))
        if roll < 0.65:
            return self.update(pk, name=f"n{pk}-{rng.randrange(10**6)}")  # key-changing
        if roll < 0.75:
            return self.update(pk, state=rng.choice([0, 1]))
        if roll < 0.9:
            return self.delete(pk)
        if roll < 0.97:
            return self.bulk_update(pk, pk + rng.randrange(1, 20), rng.randrange(1, 5))
        return self.bulk_delete(pk, pk + rng.randrange(1, 5))

    def _exists(self, pk: int) -> bool:
        with self.lock, self.conn.cursor() as cur:
            cur.execute(f"SELECT 1 FROM `{self.table}` WHERE id = %s", (pk,))
            return cur.fetchone() is not None


def es_documents(es: Elasticsearch, index: str) -> dict[str, dict[str, Any]]:
    es.indices.refresh(index=index)
    return {
        hit["_id"]: hit["_source"]
        for hit in helpers.scan(es, index=index, query={"query": {"match_all": {}}})
    }


def create_index(es: Elasticsearch, index: str) -> None:
    es.indices.create(
        index=index,
        mappings={
            "dynamic": "strict",
            "properties": {"name": {"type": "keyword"}, "score": {"type": "integer"}},
        },
    )


@contextlib.contextmanager
def running_consumer(
    bootstrap: str,
    *,
    topic: str,
    dead_letter_topic: str,
    redis: RedisSink | None,
    search: SearchSink | None,
    items: Items | None = None,
    registry: Registry | None = None,
    policy: RetryPolicy = RetryPolicy.DEFAULT,
    group_id: str | None = None,
    refresher: Refresher | None = None,
    **options: Any,
) -> Iterator[RetryConsumer]:
    """A :class:`RetryConsumer` running in a thread for the duration of the block."""
    if refresher is None and items is not None:
        from cachesync.connections import sql_engine

        refresher = Refresher(SqlRowReader(sql_engine(items.url)), registry or items.registry)
    consumer = RetryConsumer(
        bootstrap,
        topic=topic,
        dead_letter_topic=dead_letter_topic,
        group_id=group_id or unique("g"),
        redis=redis,
        search=search,
        refresher=refresher,
        policy=policy,
        consumer_options=FAST_GROUP,
        **options,
    )
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            consumer.run(stop)
        except BaseException as exc:  # surfaced by the test below
            errors.append(exc)

    thread = threading.Thread(target=target, name="retry-consumer", daemon=True)
    thread.start()
    try:
        yield consumer
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive(), "the retry consumer did not stop"
    if errors:
        raise errors[0]


def wait_until(
    what: str,
    check: Callable[[], bool],
    timeout: float,
    interval: float = 0.1,
    explain: Callable[[], str] | None = None,
) -> float:
    """Poll *check* until true; returns the seconds it took; fails the test on timeout."""
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            detail = f": {explain()}" if explain is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


@dataclass
class SidecarStep:
    """What the sidecar does with a batch's actions: apply them, then hand the failures off."""

    applier: Applier
    handler: FailureHandler

    def apply(self, actions: Sequence[Action]) -> ApplyReport:
        report = self.applier.apply(actions)
        hand_off(report, self.handler)
        return report


@dataclass
class StreamReport:
    """What :func:`stream` did."""

    changes: int = 0
    statements: int = 0
    batches: int = 0
    seconds: float = 0.0


def stream(
    items: Items,
    sidecar: SidecarStep,
    *,
    total: int,
    seconds: float,
    ids: int = 800,
    batch: int = 40,
    seed: int = 4,
    on_tick: Callable[[float, int], None] | None = None,
) -> StreamReport:
    """Make *total* random row changes over about *seconds*, applied in batches like the sidecar.

    ``on_tick(elapsed, changes)`` runs between statements: tests inject faults there.
    A :class:`HandOffError` from the applier fails the test (it would stop the sidecar).
    """
    rng = random.Random(seed)
    report = StreamReport()
    pending: list[RowChange] = []
    start = time.monotonic()
    while report.changes < total:
        elapsed = time.monotonic() - start
        if on_tick is not None:
            on_tick(elapsed, report.changes)
        ahead = report.changes / total * seconds - elapsed
        if ahead > 0:
            time.sleep(min(ahead, 0.05))
        changes = items.random_change(rng, ids)
        report.statements += 1
        report.changes += len(changes)
        pending += changes
        if len(pending) >= batch:
            sidecar.apply(items.plan(pending))
            report.batches += 1
            pending = []
    if pending:
        sidecar.apply(items.plan(pending))
        report.batches += 1
    if on_tick is not None:
        on_tick(time.monotonic() - start, report.changes)
    report.seconds = time.monotonic() - start
    return report
