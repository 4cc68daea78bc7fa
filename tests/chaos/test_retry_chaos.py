"""The retry path end to end: the real sidecar process, faults in Redis, Kafka and the sidecar.

Every statement sets the cache keys of the rows it changes (old and new images)
just before it commits, as an application reading those rows would have; the
sidecar must delete them after the commit, directly or through the retry path.
Redis keeps its data across a restart (AOF), so a key cached before an outage
and changed during it survives unless the retry path deletes it. At the end no
touched key may exist and Elasticsearch must equal the table's projection.

Kafka is a throwaway tansu broker (memory storage) frozen with SIGSTOP and
thawed with SIGCONT: the broker keeps its topics, as a real outage would.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pymysql
import pytest
import redis as redis_lib
from kafka import KafkaProducer

from cachesync import RetryPolicy
from cachesync.connections import sql_engine
from cachesync.kafka import RetryConsumer, RetryQueue, list_dead_letters
from cachesync.outbox import STATE_PENDING, OutboxRelay, OutboxStore
from cachesync.policies import RelayPolicy
from cachesync.reread import Refresher, SqlRowReader
from cachesync.sinks import RedisSink, SearchSink
from tests.integration.binlog.harness import BinlogEnv, SidecarProcess, binlog_env
from tests.integration.kafka.helpers import FAST_GROUP, create_topics, unique, wait_until
from tests.support.services import Broker, RedisProcess, start_broker, start_redis

__all__ = ["binlog_env"]  # the fixture, imported for pytest

pytestmark = [pytest.mark.services, pytest.mark.chaos]

PERSISTENT = ["--appendonly", "yes", "--appendfsync", "always"]
COLUMNS = ("id", "user_name", "nickname", "email", "state")


@dataclass
class Pipeline:
    """Cache, broker, outbox, the sidecar process and an in-process retry consumer and relay."""

    env: BinlogEnv
    cache: RedisProcess
    broker: Broker
    retry: str
    dead: str
    store: OutboxStore
    sidecar: SidecarProcess
    consumer: RetryConsumer
    client: redis_lib.Redis
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def pending_outbox(self) -> int:
        return self.store.counts()[STATE_PENDING]


def _client(proc: RedisProcess) -> redis_lib.Redis:
    return redis_lib.Redis.from_url(proc.url, socket_timeout=1, socket_connect_timeout=1)


@contextlib.contextmanager
def pipeline(env: BinlogEnv) -> Iterator[Pipeline]:
    cache = start_redis(dir=env.tmp / "redis", extra_args=PERSISTENT)
    broker = start_broker()
    store = OutboxStore.from_url(env.root_url)
    store.create_table()
    retry, dead = unique("retry"), unique("dlq")
    create_topics(broker.bootstrap, retry, dead, partitions=3)
    sidecar = SidecarProcess(
        env.settings_env(
            CACHESYNC_REDIS_URL=cache.url,
            CACHESYNC_KAFKA_BOOTSTRAP=broker.bootstrap,
            CACHESYNC_RETRY_TOPIC=retry,
            CACHESYNC_DEAD_LETTER_TOPIC=dead,
            # the sidecar's own user may only read; failures are parked with a writable one
            CACHESYNC_OUTBOX_URL=env.root_url,
        ),
        env.tmp / "sidecar.log",
    )
    engine = sql_engine(env.root_url)
    refresher = Refresher(SqlRowReader(engine), env.registry())
    consumer = RetryConsumer(
        broker.bootstrap,
        topic=retry,
        dead_letter_topic=dead,
        group_id=unique("g"),
        redis=RedisSink(_client(cache)),
        search=SearchSink(env.es),
        refresher=refresher,
        policy=RetryPolicy.DEFAULT,
        consumer_options=FAST_GROUP,
    )
    relay = OutboxRelay(
        store,
        redis=RedisSink(_client(cache)),
        search=SearchSink(env.es),
        handoff=RetryQueue(broker.bootstrap, retry, component="relay", timeout=2.0),
        refresher=refresher,
        policy=RelayPolicy(poll_interval=0.2, retry=RetryPolicy.FAST),
    )
    p = Pipeline(env, cache, broker, retry, dead, store, sidecar, consumer, _client(cache))
    p.threads = [
        threading.Thread(target=consumer.run, args=(p.stop,), daemon=True, name="consumer"),
        threading.Thread(target=relay.run, args=(p.stop,), daemon=True, name="relay"),
    ]
    try:
        sidecar.start()
        sidecar.wait_for_log("streaming binlog from")
        for thread in p.threads:
            thread.start()
        yield p
    finally:
        p.stop.set()
        broker.thaw()
        for thread in p.threads:
            thread.join(30)
        sidecar.kill()
        broker.kill()
        cache.stop()
        engine.dispose()
        store.engine.dispose()


class Writer:
    """Statements on ``users`` that cache their rows' keys just before committing."""

    def __init__(self, env: BinlogEnv, cache: redis_lib.Redis) -> None:
        self.env = env
        self.cache = cache
        self.conn = pymysql.connect(**env.root, autocommit=True, connect_timeout=5)
        self.touched: set[str] = set()
        self.last_touch: dict[str, float] = {}
        self.changes = 0
        self.statements = 0
        self.kinds: Counter[str] = Counter()

    def _rows(self, cur: Any, where: str) -> dict[int, tuple[Any, ...]]:
        cur.execute(f"SELECT {', '.join(COLUMNS)} FROM users WHERE {where} FOR UPDATE")
        return {int(r[0]): tuple(r) for r in cur.fetchall()}

    def run(self, kind: str, sql: str, where: str) -> None:
        with self.conn.cursor() as cur:
            cur.execute("BEGIN")
            before = self._rows(cur, where)
            cur.execute(sql)
            after = self._rows(cur, where)
            keys = []
            for pk in set(before) | set(after):
                if before.get(pk) == after.get(pk):
                    continue  # an unchanged row has no binlog event: its cache stays valid
                self.changes += 1
                for image in (before.get(pk), after.get(pk)):
                    if image is not None:
                        keys += self.env.keys(pk, image[1])
            if keys:
                self.touched.update(keys)
                now = time.monotonic()
                self.last_touch.update(dict.fromkeys(keys, now))
                with contextlib.suppress(redis_lib.RedisError, OSError):  # Redis may be down
                    self.cache.mset(dict.fromkeys(keys, "cached"))
            cur.execute("COMMIT")
        self.statements += 1
        self.kinds[kind] += 1

    def random(self, rng: random.Random, ids: int) -> None:
        pk = rng.randrange(1, ids + 1)
        n = rng.randrange(10**6)
        roll = rng.random()
        with self.conn.cursor() as cur:
            cur.execute("SELECT 1 FROM users WHERE id = %s", (pk,))
            exists = cur.fetchone() is not None
        if not exists:
            email = "NULL" if rng.random() < 0.2 else f"'u{pk}@example.com'"
            self.run(
                "insert",
                f"INSERT INTO users VALUES ({pk}, 'u{pk}-{n}', 'n{n}', {email}, {rng.choice([0, 0, 1])})",
                f"id = {pk}",
            )
        elif roll < 0.35:
            self.run("update", f"UPDATE users SET nickname = 'n{n}' WHERE id = {pk}", f"id = {pk}")
        elif roll < 0.55:
            self.run(  # a key-changing update: the old by-name key must go too
                "rename", f"UPDATE users SET user_name = 'u{pk}-{n}' WHERE id = {pk}", f"id = {pk}"
            )
        elif roll < 0.65:
            self.run("flip", f"UPDATE users SET state = 1 - state WHERE id = {pk}", f"id = {pk}")
        elif roll < 0.8:
            self.run("delete", f"DELETE FROM users WHERE id = {pk}", f"id = {pk}")
        elif roll < 0.95:
            hi = pk + rng.randrange(5, 40)
            self.run(
                "bulk update",
                f"UPDATE users SET nickname = CONCAT('b', id, '-{n}') WHERE id BETWEEN {pk} AND {hi}",
                f"id BETWEEN {pk} AND {hi}",
            )
        else:
            hi = pk + rng.randrange(2, 10)
            self.run(
                "bulk delete",
                f"DELETE FROM users WHERE id BETWEEN {pk} AND {hi}",
                f"id BETWEEN {pk} AND {hi}",
            )


def documents(env: BinlogEnv) -> dict[str, Any]:
    """The index without the harness's sentinel row (written before the sidecar started)."""
    return {k: v for k, v in env.documents().items() if k != "0"}


def expected(env: BinlogEnv) -> dict[str, Any]:
    return {k: v for k, v in env.expected_documents().items() if k != "0"}


def converge(p: Pipeline, writer: Writer, timeout: float = 90.0) -> float:
    """Wait until every touched key is gone, the outbox drained and the index matches."""
    cache = p.client

    def done() -> bool:
        if p.pending_outbox() or p.consumer.pending():
            return False
        keys = list(writer.touched)
        for i in range(0, len(keys), 1000):
            if cache.exists(*keys[i : i + 1000]):
                return False
        return documents(p.env) == expected(p.env)

    def explain() -> str:
        left = [k for k in writer.touched if cache.exists(k)]
        docs, want = documents(p.env), expected(p.env)
        wrong = sorted(k for k in set(docs) | set(want) if docs.get(k) != want.get(k))
        return (
            f"{len(left)} keys left {left[:5]}, outbox pending {p.pending_outbox()}, "
            f"consumer {p.consumer.stats}, documents differing {wrong[:5]} "
            f"{[(docs.get(k), want.get(k)) for k in wrong[:3]]}"
        )

    return wait_until("convergence", done, timeout, 0.2, explain)


def test_redis_down_30s_while_5000_changes_stream_through_the_sidecar(
    binlog_env: BinlogEnv,
) -> None:
    env = binlog_env
    rng = random.Random(30)
    with pipeline(env) as p:
        writer = Writer(env, p.client)
        outage = {"down": 0.0, "up": 0.0, "converged": 0.0}

        def watch() -> None:
            """From Redis's return: when are the keys changed during the outage all gone?"""
            cache = _client(p.cache)
            while not outage["converged"]:
                waiting = [
                    k
                    for k, t in list(writer.last_touch.items())
                    if outage["down"] <= t < outage["up"]
                ]
                exists = any(
                    cache.exists(*waiting[i : i + 1000]) for i in range(0, len(waiting), 1000)
                )
                if not exists and p.consumer.pending() == 0:
                    outage["converged"] = time.monotonic()
                time.sleep(0.02)

        start = time.monotonic()
        while writer.changes < 5000:
            elapsed = time.monotonic() - start
            if not outage["down"] and elapsed >= 4.0:
                p.cache.stop()  # SIGTERM: Redis writes its AOF and exits
                outage["down"] = time.monotonic()
            if outage["down"] and not outage["up"] and time.monotonic() - outage["down"] >= 30:
                p.cache.start()  # same port and AOF: keys cached before the outage are back
                outage["up"] = time.monotonic()
                threading.Thread(target=watch, daemon=True).start()
            ahead = writer.changes / 5000 * 38.0 - elapsed
            if ahead > 0:
                time.sleep(min(ahead, 0.05))
            writer.random(rng, 800)
        streamed = time.monotonic() - start
        while not outage["up"]:  # a fast stream: keep the outage at 30 s anyway
            if time.monotonic() - outage["down"] >= 30:
                p.cache.start()
                outage["up"] = time.monotonic()
                threading.Thread(target=watch, daemon=True).start()
            time.sleep(0.05)
        converge(p, writer, 60)
        wait_until("the watcher", lambda: bool(outage["converged"]), 10)
        stats = p.consumer.stats
        assert stats.received > 0, "the outage did not reach the retry path"
        assert stats.dead_lettered == 0
        assert list_dead_letters(p.broker.bootstrap, p.dead, timeout=5) == []
        assert p.store.rows() == []  # Kafka was up: nothing went to the outbox
    print(
        f"\nredis down 30s through the sidecar: {writer.changes} row changes in "
        f"{writer.statements} statements over {streamed:.1f}s; {len(writer.touched)} keys "
        f"touched; retry consumer {stats.received} records, {stats.attempts} attempts, "
        f"{stats.applied} applied, {stats.dead_lettered} dead letters; converged "
        f"{outage['converged'] - outage['up']:.2f}s after Redis returned"
    )


def test_sidecar_killed_between_failed_apply_and_hand_off_rereads_the_change(
    binlog_env: BinlogEnv,
) -> None:
    env = binlog_env
    with pipeline(env) as p:
        writer = Writer(env, p.client)
        for pk in range(1, 21):
            writer.run(
                "insert", f"INSERT INTO users VALUES ({pk}, 'u{pk}', 'n', NULL, 0)", f"id = {pk}"
            )
        converge(p, writer, 30)
        # Cached before the outage, changed during it: once the sidecar dies before handing
        # the failure off, only a re-read of the binlog can delete these keys.
        old = [k for pk in range(1, 21) for k in env.keys(pk, f"u{pk}")]
        p.client.mset(dict.fromkeys(old, "cached"))
        writer.touched.update(old + [k for pk in range(1, 21) for k in env.keys(pk, f"r{pk}")])
        p.cache.stop()
        p.broker.freeze()
        try:
            env.sql(
                "UPDATE users SET user_name = CONCAT('r', id), nickname = 'renamed' WHERE id <= 20"
            )
            # The apply fails within a second (Redis refuses); the hand-off then waits up to
            # 5 s for the frozen broker. Kill the sidecar inside that wait.
            time.sleep(2.5)
            assert p.pending_outbox() == 0, "the hand-off completed before the kill"
            p.sidecar.kill()
        finally:
            p.broker.thaw()
        assert p.pending_outbox() == 0
        p.cache.start()
        assert p.client.exists(*old) == len(old), "Redis lost the keys cached before the outage"
        p.sidecar.start()
        p.sidecar.wait_for_log("streaming binlog from", occurrences=2)
        converged = converge(p, writer, 60)
        assert all(
            d["nickname"] == "renamed"
            for d in env.documents().values()
            if d["nickname"] != "sentinel-0"
        )
        print(
            f"\nkilled between failed apply and hand-off: re-read and converged in {converged:.1f}s"
        )


@pytest.mark.timeout(240)
def test_random_faults_over_random_changes_converge(binlog_env: BinlogEnv) -> None:
    env = binlog_env
    seed = int(os.environ.get("CACHESYNC_CHAOS_SEED", "20261101"))  # vary it to explore
    rng = random.Random(seed)
    faults: Counter[str] = Counter()
    timeline: list[str] = []
    t0 = time.monotonic()

    def event(what: str) -> None:
        timeline.append(f"{time.monotonic() - t0:5.1f}s {what}")

    with pipeline(env) as p:
        writer = Writer(env, p.client)
        deadline = time.monotonic() + 40.0
        # every kind at least twice, in a random order, then random ones
        plan = ["redis", "kafka", "both", "poison", "kill"] * 2
        rng.shuffle(plan)
        redis_back = kafka_back = 0.0
        next_fault = time.monotonic() + rng.uniform(0.5, 2)
        try:
            while time.monotonic() < deadline:
                writer.random(rng, 400)
                time.sleep(rng.uniform(0, 0.004))
                now = time.monotonic()
                if redis_back and now >= redis_back:
                    p.cache.start()
                    redis_back = 0.0
                    event("redis back")
                if kafka_back and now >= kafka_back:
                    p.broker.thaw()
                    kafka_back = 0.0
                    event("kafka thawed")
                if now < next_fault:
                    continue
                next_fault = now + rng.uniform(1.5, 4.0)
                fault = (
                    plan.pop(0)
                    if plan
                    else rng.choice(["redis", "kafka", "both", "poison", "kill"])
                )
                # both down for longer than the retry queue's 5 s wait for Kafka, so that
                # failures overflow into the outbox
                length = rng.uniform(9, 12) if fault == "both" else rng.uniform(2, 6)
                if fault in ("redis", "both") and not redis_back:
                    p.cache.stop()
                    redis_back = now + length
                    faults["redis down"] += 1
                    event("redis down")
                if fault in ("kafka", "both") and not kafka_back:
                    p.broker.freeze()
                    kafka_back = now + length
                    faults["kafka frozen"] += 1
                    event("kafka frozen")
                if fault == "poison" and not kafka_back:
                    producer = KafkaProducer(bootstrap_servers=p.broker.bootstrap)
                    producer.send(p.retry, key=b"poison", value=b"\x00 not a retry message").get(10)
                    producer.close()
                    faults["poison"] += 1
                    event("poison record")
                if fault == "kill":
                    p.sidecar.kill()  # SIGKILL, wherever it was
                    p.sidecar.start()
                    faults["sidecar SIGKILL"] += 1
                    event("sidecar SIGKILL + restart")
        finally:
            if kafka_back:
                p.broker.thaw()
            if redis_back:
                p.cache.start()
        restored = time.monotonic()
        p.sidecar.wait_for_log("streaming binlog from", occurrences=p.sidecar.starts, timeout=60)
        converge(p, writer, 120)
        converged = time.monotonic() - restored
        stats = p.consumer.stats
        rows = p.store.rows()
        parked = sum(len(json.loads(r["payload"])) for r in rows)
        assert stats.dead_lettered == stats.undecodable == faults["poison"]
        letters = list_dead_letters(p.broker.bootstrap, p.dead, timeout=5)
        assert [s.letter.reason for s in letters if s.letter] == ["undecodable"] * faults["poison"]
        assert "Traceback" not in p.sidecar.output()
    print(f"\nfaults (seed {seed}): " + "; ".join(timeline))
    print(
        f"chaos: {writer.changes} row changes in {writer.statements} statements "
        f"({dict(writer.kinds)}); {len(writer.touched)} keys touched; faults injected "
        f"{sum(faults.values())} ({dict(faults)}); sidecar starts {p.sidecar.starts}; "
        f"retry consumer: {stats.received} records, {stats.attempts} attempts, {stats.applied} "
        f"applied, {stats.dead_lettered} dead letters; outbox: {parked} actions in {len(rows)} "
        f"rows; converged {converged:.1f}s after the last fault ended"
    )
