"""The retry consumer on the real broker, Redis, Elasticsearch API and MariaDB."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Sequence

import pytest
import redis
from elasticsearch import Elasticsearch
from kafka import KafkaAdminClient, KafkaProducer

from cachesync import (
    DeleteKeys,
    Failure,
    IndexDoc,
    RetryPolicy,
    TransientError,
)
from cachesync.actions import DocumentAction
from cachesync.kafka import RetryQueue, list_dead_letters
from cachesync.kafka.codec import ErrorInfo, RetryMessage, encode_message
from cachesync.sinks import RedisSink, SearchSink
from cachesync.sinks.elasticsearch import DocumentFailure
from tests.integration.kafka.helpers import (
    Items,
    es_documents,
    running_consumer,
    unique,
    wait_until,
)

pytestmark = pytest.mark.services

QUICK = RetryPolicy(attempts=4, min_backoff=0.3, max_backoff=1.0, jitter=0.1)


class FlakySearch(SearchSink):
    """Elasticsearch that rejects chosen documents with a transient per-item error (a 429)."""

    def __init__(self, es: Elasticsearch, failing: set[str], times: int | None = None) -> None:
        super().__init__(es, refresh=True)
        self.failing = failing
        self.times = times
        self.seen: dict[str, int] = {}
        self.applied: list[tuple[str, float]] = []
        self.lock = threading.Lock()

    def apply(self, actions: Sequence[DocumentAction]) -> list[DocumentFailure]:
        ok, failed = [], []
        with self.lock:
            for a in actions:
                n = self.seen[a.doc_id] = self.seen.get(a.doc_id, 0) + 1
                if a.doc_id in self.failing and (self.times is None or n <= self.times):
                    failed.append(
                        DocumentFailure(a, TransientError(f"429 Too Many Requests ({a.doc_id})"))
                    )
                else:
                    ok.append(a)
                    self.applied.append((a.doc_id, time.monotonic()))
        return failed + super().apply(ok)


def committed(bootstrap: str, group: str, topic: str) -> int:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic)


def test_retried_deletes_and_documents_are_applied_and_committed(
    kafka_bootstrap: str,
    topics: tuple[str, str],
    items: Items,
    r: redis.Redis,
    redis_sink: RedisSink,
    es: Elasticsearch,
) -> None:
    retry, dead = topics
    changes = items.insert(1, "ann", score=1) + items.insert(2, "bob", score=2)
    actions = items.plan(changes)
    # The document content queued with the failure is stale on purpose: the row changed later.
    items.update(1, score=99)
    items.delete(2)
    r.mset({k: "stale" for k in items.touched})
    queue = RetryQueue(kafka_bootstrap, retry)
    queue.handle([Failure(a, TransientError("down")) for a in actions])
    queue.close()
    group = unique("g")
    search = SearchSink(es, refresh=True)
    with running_consumer(
        kafka_bootstrap,
        topic=retry,
        dead_letter_topic=dead,
        redis=redis_sink,
        search=search,
        items=items,
        policy=QUICK,
        group_id=group,
    ) as consumer:
        wait_until("keys deleted", lambda: r.exists(*items.touched) == 0, 20)
        wait_until(
            "documents current",
            lambda: es_documents(es, items.index) == items.expected_documents(),
            20,
        )
        wait_until("offsets committed", lambda: committed(kafka_bootstrap, group, retry) == 6, 10)
    # The re-read indexed the row as it is now, with the queued action's own version.
    doc = es.get(index=items.index, id="1")
    assert doc["_source"] == {"name": "ann", "score": 99}
    assert doc["_version"] == actions[1].position.version  # type: ignore[union-attr]
    assert consumer.stats.applied == 6 and consumer.stats.dead_lettered == 0


def test_a_waiting_key_does_not_block_its_partition(
    kafka_bootstrap: str,
    topics: tuple[str, str],
    items: Items,
    redis_sink: RedisSink,
    es: Elasticsearch,
) -> None:
    retry, dead = topics
    changes = []
    for pk in range(1, 31):
        changes += items.insert(pk, f"n{pk}", score=pk)
    actions = [a for a in items.plan(changes) if isinstance(a, IndexDoc)]
    search = FlakySearch(es, failing={"1"}, times=2)
    queue = RetryQueue(kafka_bootstrap, retry)
    queue.handle(
        [Failure(a, TransientError("429")) for a in actions]
    )  # doc 1 first in the partition
    queue.close()
    group = unique("g")
    slow = RetryPolicy(attempts=5, min_backoff=1.5, max_backoff=3.0, jitter=0.0)
    with running_consumer(
        kafka_bootstrap,
        topic=retry,
        dead_letter_topic=dead,
        redis=redis_sink,
        search=search,
        items=items,
        policy=slow,
        group_id=group,
    ):
        wait_until(
            "29 other documents", lambda: len({d for d, _ in search.applied} - {"1"}) == 29, 20
        )
        # doc 1 still waits for its backoff, and holds back the committed offset of its partition
        assert "1" not in {d for d, _ in search.applied}
        time.sleep(1.0)
        assert committed(kafka_bootstrap, group, retry) == 0
        wait_until("doc 1 after its backoff", lambda: "1" in {d for d, _ in search.applied}, 20)
        wait_until("all committed", lambda: committed(kafka_bootstrap, group, retry) == 30, 10)
    first_other = min(t for d, t in search.applied if d != "1")
    doc1 = min(t for d, t in search.applied if d == "1")
    assert doc1 - first_other >= 2.5  # two backoffs of 1.5 s minus scheduling slack
    assert es_documents(es, items.index) == items.expected_documents()


def test_many_failing_updates_of_one_document_end_at_the_newest_version(
    kafka_bootstrap: str,
    topics: tuple[str, str],
    items: Items,
    redis_sink: RedisSink,
    es: Elasticsearch,
) -> None:
    retry, dead = topics
    queue = RetryQueue(kafka_bootstrap, retry)
    versions = []
    for i in range(40):
        changes = items.insert(7, "seven", score=0) if i == 0 else items.update(7, score=i)
        docs = [a for a in items.plan(changes) if isinstance(a, IndexDoc)]
        versions.append(docs[0].version)
        # every one of them failed, and each carries the content of ITS change
        queue.handle([Failure(docs[0], TransientError("429"))])
    queue.close()
    # QUICK allows 4 attempts in all: the sidecar's, then three by the consumer
    search = FlakySearch(es, failing={"7"}, times=2)
    with running_consumer(
        kafka_bootstrap,
        topic=retry,
        dead_letter_topic=dead,
        redis=redis_sink,
        search=search,
        items=items,
        policy=QUICK,
    ) as consumer:
        wait_until("all 40 retried", lambda: consumer.stats.applied == 40, 30)
    doc = es.get(index=items.index, id="7")
    assert doc["_source"] == {"name": "seven", "score": 39}
    assert doc["_version"] == max(versions)
    # the queue for one key is applied as one coalesced write per attempt (3 when all 40
    # records arrive in the first poll), never one write per record
    assert search.seen["7"] <= 5
    assert consumer.stats.dead_lettered == 0


def test_a_retry_that_finds_the_row_gone_deletes_the_document(
    kafka_bootstrap: str,
    topics: tuple[str, str],
    items: Items,
    redis_sink: RedisSink,
    es: Elasticsearch,
) -> None:
    retry, dead = topics
    search = SearchSink(es, refresh=True)
    created = items.plan(items.insert(3, "c", score=3))
    search.apply([a for a in created if isinstance(a, IndexDoc)])
    stale = [a for a in items.plan(items.update(3, score=4)) if isinstance(a, IndexDoc)]
    items.delete(3)  # the row is gone before the retry runs; its delete event "was lost" here
    queue = RetryQueue(kafka_bootstrap, retry)
    queue.handle([Failure(stale[0], TransientError("429"))])
    queue.close()
    with running_consumer(
        kafka_bootstrap,
        topic=retry,
        dead_letter_topic=dead,
        redis=redis_sink,
        search=search,
        items=items,
        policy=QUICK,
    ) as consumer:
        wait_until("retried", lambda: consumer.stats.applied == 1, 20)
    assert es_documents(es, items.index) == {}


def test_exhausted_retries_go_to_the_dead_letter_topic_with_context(
    kafka_bootstrap: str,
    topics: tuple[str, str],
    items: Items,
    redis_sink: RedisSink,
    es: Elasticsearch,
) -> None:
    retry, dead = topics
    docs = [
        a
        for a in items.plan(items.insert(5, "e") + items.insert(6, "f"))
        if isinstance(a, IndexDoc)
    ]
    queue = RetryQueue(kafka_bootstrap, retry, component="sidecar")
    queue.handle([Failure(a, TransientError("429")) for a in docs])
    queue.close()
    search = FlakySearch(es, failing={"5"})  # doc 5 never succeeds
    with running_consumer(
        kafka_bootstrap,
        topic=retry,
        dead_letter_topic=dead,
        redis=redis_sink,
        search=search,
        items=items,
        policy=QUICK,
    ) as consumer:
        wait_until("dead letter", lambda: consumer.stats.dead_lettered == 1, 30)
        assert consumer.stats.applied == 1
    (letter,) = list_dead_letters(kafka_bootstrap, dead)
    assert letter.key == f"{items.index}/5"
    assert letter.letter is not None and letter.letter.reason == "exhausted"
    assert letter.letter.message is not None and letter.letter.message.attempt == QUICK.attempts
    assert "429" in letter.letter.error.message and letter.letter.error.transient
    assert letter.letter.source.topic == retry and letter.letter.source.offset == 0
    assert letter.letter.message.origin["component"] == "sidecar"
    assert letter.letter.consumer["group"]


def test_a_newer_record_for_a_waiting_key_queues_behind_it(
    kafka_bootstrap: str,
    topics: tuple[str, str],
    items: Items,
    r: redis.Redis,
    redis_sink: RedisSink,
) -> None:
    """Order per cache key: a later record of a waiting key is never applied before it."""
    retry, dead = topics
    key = f"item:{items.tag}:ordered"
    now = dt.datetime.now(dt.UTC)
    old = RetryMessage(DeleteKeys((key,)), 2, now, now, ErrorInfo("TransientError", "x", True))
    new = RetryMessage(DeleteKeys((key,)), 0, now, now, None)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    producer.send(retry, key=key.encode(), value=encode_message(old))
    producer.send(retry, key=key.encode(), value=encode_message(new))
    producer.flush()
    producer.close()
    r.set(key, "cached")
    slow = RetryPolicy(attempts=5, min_backoff=3.0, max_backoff=6.0, jitter=0.0)
    with running_consumer(
        kafka_bootstrap,
        topic=retry,
        dead_letter_topic=dead,
        redis=redis_sink,
        search=None,
        policy=slow,
    ) as consumer:
        # the new record is due at once, but waits behind the old one (due backoff(2) = 6 s
        # after its last failure; the group join takes ~3 s of that)
        wait_until("both received", lambda: consumer.stats.received == 2, 15)
        assert r.exists(key) == 1
        wait_until("applied together", lambda: consumer.stats.applied == 2, 10)
    assert r.exists(key) == 0
