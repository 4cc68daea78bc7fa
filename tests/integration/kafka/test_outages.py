"""Outages under a stream of changes: Redis down; Kafka frozen as well.

(The 30 s Redis outage under 5,000 changes runs through the real sidecar process in
``tests/chaos/test_retry_chaos.py``; these drive the same components in-process.)

The "sidecar" here is an :class:`Applier` fed with the actions :func:`plan` makes
of each row change, exactly as the binlog sidecar does, with the real
:class:`RetryQueue` as its failure handler. Every key a change touches is cached
(SET) just before the change commits, so its delete must come after: at the end
no touched key may exist. Redis keeps its data across the outage (AOF), so the
keys cached before the outage and changed during it are exactly the ones only
the retry path can delete.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from elasticsearch import Elasticsearch

from cachesync import Applier, RetryPolicy, metrics
from cachesync.kafka import RetryConsumer, RetryQueue, list_dead_letters
from cachesync.outbox import STATE_PENDING, OutboxRelay, OutboxStore
from cachesync.policies import RelayPolicy
from cachesync.reread import Refresher, SqlRowReader
from cachesync.sinks import RedisSink, SearchSink
from cachesync.testing import RecordingFailureHandler
from tests.integration.kafka.helpers import (
    Items,
    SidecarStep,
    create_topics,
    es_documents,
    running_consumer,
    stream,
    unique,
    wait_until,
)
from tests.support.services import RedisProcess, start_broker, start_redis

pytestmark = pytest.mark.services

PERSISTENT = ["--appendonly", "yes", "--appendfsync", "always"]
OUTAGE = 8.0


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[RedisProcess]:
    proc = start_redis(dir=tmp_path / "redis", extra_args=PERSISTENT)
    yield proc
    proc.stop()


def client(proc: RedisProcess) -> redis.Redis:
    return redis.Redis.from_url(proc.url, socket_timeout=1, socket_connect_timeout=1)


def test_redis_down_while_changes_stream(
    kafka_bootstrap: str, items: Items, cache: RedisProcess, es: Elasticsearch
) -> None:
    retry, dead = unique("retry"), unique("dlq")
    create_topics(kafka_bootstrap, retry, dead, partitions=3)
    sidecar_redis, consumer_redis, app = client(cache), client(cache), client(cache)
    items.cache = app
    handoff = RecordingFailureHandler(RetryQueue(kafka_bootstrap, retry))
    sidecar = SidecarStep(Applier(RedisSink(sidecar_redis), SearchSink(es)), handoff)
    before = metrics.snapshot()
    outage = {"down": 0.0, "up": 0.0, "converged": 0.0}
    consumers: list[RetryConsumer] = []

    def watch() -> None:
        """From Redis's return: when is every action handed off so far applied?"""
        while not outage["converged"]:
            owed = len(handoff.failures)
            consumer = consumers[0]
            if consumer.pending() == 0 and consumer.stats.applied >= owed:
                outage["converged"] = time.monotonic()
            time.sleep(0.01)

    def faults(elapsed: float, _changes: int) -> None:
        if not outage["down"] and elapsed >= 2.0:
            cache.stop()  # SIGTERM: Redis writes its AOF and exits
            outage["down"] = time.monotonic()
        elif outage["down"] and not outage["up"] and time.monotonic() - outage["down"] >= OUTAGE:
            cache.start()  # same port, same AOF: keys cached before the outage are back
            outage["up"] = time.monotonic()
            threading.Thread(target=watch, daemon=True).start()

    with running_consumer(
        kafka_bootstrap,
        topic=retry,
        dead_letter_topic=dead,
        redis=RedisSink(consumer_redis),
        search=SearchSink(es),
        items=items,
        policy=RetryPolicy.DEFAULT,
    ) as consumer:
        consumers.append(consumer)
        report = stream(items, sidecar, total=1500, seconds=12.0, on_tick=faults)
        while not outage["up"]:  # a fast stream: keep the outage as long anyway
            faults(0.0, 0)
            time.sleep(0.05)
        failures_during_outage = len(handoff.failures)
        assert failures_during_outage > 0, "the outage did not hit the stream"
        wait_until(
            "the retry backlog to drain",
            lambda: (
                consumer.pending() == 0
                and consumer.stats.applied + consumer.stats.dead_lettered >= len(handoff.failures)
            ),
            60,
            interval=0.02,
        )
        wait_until("the watcher", lambda: bool(outage["converged"]), 10)
        converged = outage["converged"] - outage["up"]
        stale = [k for k in items.touched if sidecar_redis.exists(k)]
        assert stale == [], f"{len(stale)} touched keys survived their last change"
        assert es_documents(es, items.index) == items.expected_documents()
        stats = consumer.stats
    after = metrics.snapshot()
    assert stats.dead_lettered == 0
    assert list_dead_letters(kafka_bootstrap, dead, timeout=5) == []
    print(
        f"\nredis outage {OUTAGE:.0f}s: {report.changes} changes ({report.statements} statements) in "
        f"{report.seconds:.1f}s; {len(items.touched)} keys touched; {len(handoff.failures)} actions "
        f"handed to the retry topic; consumer attempts {stats.attempts} "
        f"(retries_total +{after['retries_total'] - before['retries_total']}), applied "
        f"{stats.applied}, dead letters {stats.dead_lettered}; converged {converged:.2f}s after "
        f"Redis returned"
    )


def test_kafka_frozen_while_redis_down_parks_failures_in_the_outbox(
    items: Items, cache: RedisProcess, es: Elasticsearch, mysql_url: str
) -> None:
    """Both down: failures go to the outbox table; nothing is lost once both return.

    The broker is a throwaway tansu instance (memory storage), frozen with SIGSTOP and
    thawed with SIGCONT: a restart would lose its topics, a freeze keeps them.
    """
    broker = start_broker()
    store = OutboxStore.from_url(mysql_url, table=f"outbox_{unique('t').replace('-', '_')}")
    store.create_table()
    stop_relay = threading.Event()
    relay_thread: threading.Thread | None = None
    try:
        retry, dead = unique("retry"), unique("dlq")
        create_topics(broker.bootstrap, retry, dead, partitions=2)
        sidecar_redis, consumer_redis, app = client(cache), client(cache), client(cache)
        items.cache = app
        queue = RetryQueue(broker.bootstrap, retry, outbox=store, timeout=2.0)
        handoff = RecordingFailureHandler(queue)
        sidecar = SidecarStep(Applier(RedisSink(sidecar_redis), SearchSink(es)), handoff)
        with running_consumer(
            broker.bootstrap,
            topic=retry,
            dead_letter_topic=dead,
            redis=RedisSink(consumer_redis),
            search=SearchSink(es),
            items=items,
        ) as consumer:
            stream(items, sidecar, total=300, seconds=2.0, seed=1)
            cache.stop()
            broker.freeze()
            try:
                t0 = time.monotonic()
                down = stream(items, sidecar, total=700, seconds=6.0, seed=2)
                stalled = time.monotonic() - t0
                parked = store.rows(STATE_PENDING)
                assert parked, "nothing reached the outbox"
                assert sum(len(json.loads(r["payload"])) for r in parked) == len(handoff.failures)
            finally:
                broker.thaw()
                cache.start()
            back = time.monotonic()
            relay = OutboxRelay(
                store,
                redis=RedisSink(client(cache)),
                search=SearchSink(es),
                handoff=RetryQueue(broker.bootstrap, retry, component="relay", timeout=2.0),
                refresher=Refresher(SqlRowReader(store.engine), items.registry),
                policy=RelayPolicy(poll_interval=0.2),
            )
            relay_thread = threading.Thread(target=relay.run, args=(stop_relay,), daemon=True)
            relay_thread.start()

            def converged_() -> bool:
                return (
                    store.counts()[STATE_PENDING] == 0
                    and consumer.pending() == 0
                    and not any(sidecar_redis.exists(k) for k in items.touched)
                )

            def explain() -> str:
                left = [k for k in items.touched if sidecar_redis.exists(k)]
                return f"outbox {store.counts()}, consumer {consumer.stats}, keys left {left[:10]}"

            wait_until("the outbox to drain", converged_, 60, 0.05, explain)
            converged = time.monotonic() - back
            assert es_documents(es, items.index) == items.expected_documents()
            # and the pipeline works normally afterwards
            stream(items, sidecar, total=200, seconds=2.0, seed=3)
            wait_until("every key gone", converged_, 30, 0.05, explain)
            assert es_documents(es, items.index) == items.expected_documents()
            assert consumer.stats.dead_lettered == 0
        print(
            f"\nkafka frozen + redis down: {down.changes} changes during the outage, "
            f"{len(handoff.failures)} actions parked in {len(parked)} outbox rows (stream stalled "
            f"{stalled:.1f}s in all: one bounded Kafka wait), outbox drained and every key "
            f"deleted {converged:.2f}s after both returned"
        )
    finally:
        stop_relay.set()
        if relay_thread is not None:
            relay_thread.join(10)
        broker.thaw()
        broker.kill()  # a throwaway in-memory broker: nothing to shut down cleanly
        with store.engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS `{store.name}`")
        store.engine.dispose()
