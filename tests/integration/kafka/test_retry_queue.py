"""RetryQueue on the real broker and MariaDB: what it publishes, and where it goes when Kafka can't."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from cachesync import (
    BinlogPosition,
    DeleteDoc,
    DeleteKeys,
    Failure,
    HandOffError,
    IndexDoc,
    RowRef,
    TransientError,
    metrics,
)
from cachesync.codec import decode_actions
from cachesync.kafka import RetryQueue, decode_message
from cachesync.kafka.client import read_topic
from cachesync.outbox import KIND_FAILED, STATE_PENDING, OutboxStore
from tests.integration.kafka.helpers import create_topics, unique
from tests.support.services import free_port, start_broker

pytestmark = pytest.mark.services

POS = BinlogPosition("mysql-bin.000007", 4321, 0)


@pytest.fixture
def outbox(mysql_url: str) -> Iterator[OutboxStore]:
    store = OutboxStore.from_url(
        mysql_url, table=f"cachesync_outbox_{unique('t')[2:]}".replace("-", "_")
    )
    store.create_table()
    yield store
    with store.engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS `{store.name}`")
    store.engine.dispose()


def failures() -> list[Failure]:
    error = TransientError("Redis UNLINK of 2 key(s) failed: ConnectionError")
    ref = RowRef("cachesync_test", "users", {"id": 9})
    return [
        Failure(DeleteKeys(("user:9", "user:by-name:ann"), POS), error, first_failed_at=1.7e9),
        Failure(IndexDoc("users", "9", {"name": "ann"}, POS, ref), error, attempts=2),
        Failure(DeleteDoc("users", "10", POS, ref), error),
    ]


def test_each_key_becomes_one_acknowledged_record_keyed_for_order(kafka_bootstrap: str) -> None:
    topic = unique("retry")
    create_topics(kafka_bootstrap, topic, partitions=3)
    queue = RetryQueue(kafka_bootstrap, topic, component="sidecar", pipeline="test")
    try:
        queue.handle(failures())
    finally:
        queue.close()
    records = list(read_topic(kafka_bootstrap, topic))
    by_key = {r.key.decode(): r for r in records if r.key}
    assert sorted(by_key) == ["user:9", "user:by-name:ann", "users/10", "users/9"]
    message = decode_message(by_key["users/9"].value)
    assert message.attempt == 2
    assert isinstance(message.action, IndexDoc) and message.action.source is not None
    assert message.last_error is not None and message.last_error.transient
    assert message.origin["component"] == "sidecar" and message.origin["pipeline"] == "test"
    first = decode_message(by_key["user:9"].value)
    assert first.first_failed_at.timestamp() == 1.7e9
    assert first.action == DeleteKeys(("user:9",), POS)
    raw = json.loads(by_key["user:by-name:ann"].value)
    assert raw["format"] == "cachesync.retry" and raw["v"] == 1 and raw["key"] == "user:by-name:ann"


def test_kafka_unreachable_parks_failures_in_the_outbox_within_the_bound(
    outbox: OutboxStore,
) -> None:
    dead_broker = f"127.0.0.1:{free_port()}"
    queue = RetryQueue(dead_broker, "cachesync.retry", outbox=outbox, timeout=1.0)
    before = metrics.snapshot()["outbox_pending_total"]
    start = time.monotonic()
    queue.handle(failures())
    first = time.monotonic() - start
    start = time.monotonic()
    queue.handle(failures()[:1])  # during the cool-down: straight to the outbox
    second = time.monotonic() - start
    queue.close()
    assert first < 4.0, f"the first hand-off waited {first:.1f}s for Kafka"
    assert second < 0.5, f"a hand-off during the cool-down waited {second:.1f}s"
    rows = outbox.rows()
    assert [(r["kind"], r["state"]) for r in rows] == [(KIND_FAILED, STATE_PENDING)] * 2
    assert decode_actions(rows[0]["payload"]) == [
        DeleteKeys(("user:9",), POS),
        DeleteKeys(("user:by-name:ann",), POS),
        failures()[1].action,
        failures()[2].action,
    ]
    assert rows[0]["attempts"] == 2 and "ConnectionError" in rows[0]["last_error"]
    assert metrics.snapshot()["outbox_pending_total"] - before == 6


def test_neither_kafka_nor_outbox_raises_handoff_error() -> None:
    queue = RetryQueue(
        f"127.0.0.1:{free_port()}",
        "cachesync.retry",
        outbox=OutboxStore.from_url(f"mysql://root@127.0.0.1:{free_port()}/x", timeout=1.0),
        timeout=1.0,
    )
    with pytest.raises(HandOffError, match="neither in Kafka"):
        queue.handle(failures())
    queue.close()


def test_frozen_broker_opens_the_circuit_and_a_background_probe_closes_it(
    outbox: OutboxStore,
) -> None:
    broker = start_broker()
    try:
        topic = unique("retry")
        create_topics(broker.bootstrap, topic)
        queue = RetryQueue(broker.bootstrap, topic, outbox=outbox, timeout=1.0)
        queue.handle(failures()[:1])  # connects while the broker answers
        assert len(list(read_topic(broker.bootstrap, topic))) == 2
        with broker.frozen():
            start = time.monotonic()
            queue.handle(failures()[:1])  # waits at most `timeout`, then the outbox
            queue.handle(failures()[:1])  # circuit open: no wait at all
            assert time.monotonic() - start < 3.0
            assert not queue.kafka_available()
        assert len(outbox.rows()) == 2
        # after the thaw the next hand-offs still go to the outbox while a probe runs in the
        # background; once it answers, hand-offs reach Kafka again
        deadline = time.monotonic() + 15
        while not queue.kafka_available():
            assert time.monotonic() < deadline, "the probe never closed the circuit"
            queue.handle(failures()[:1])
            time.sleep(0.2)
        queue.handle(failures()[:1])
        queue.close()
        keys = [r.key for r in read_topic(broker.bootstrap, topic)]
        assert keys.count(b"user:9") >= 2  # before the freeze, and after the probe
    finally:
        broker.thaw()
        broker.kill()  # a throwaway in-memory broker: nothing to shut down cleanly
