"""The retry consumer cannot be crashed by its input (Kafka and the dead-letter topic faked).

Generated polls mix valid records with poison (catalogued shapes, random bytes,
random JSON). Whatever the mix: the consumer never raises, every valid record is
applied and none is dead-lettered, every poison is exactly one dead letter
holding its raw bytes, and the partition's offset moves past all of them.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cachesync import BinlogPosition, DecodeError, DeleteKeys, IndexDoc
from cachesync.actions import DocumentAction
from cachesync.kafka import RetryConsumer
from cachesync.kafka.client import Record
from cachesync.kafka.codec import ErrorInfo, RetryMessage, encode_message
from cachesync.kafka.scheduler import Outcome, Scheduler
from cachesync.sinks.base import DocumentFailure
from cachesync.testing import MemoryDocumentSink, MemoryKeySink
from tests.unit.kafka.poison import EDGE_KEYS, POISONS, RAW_POISONS, delete_keys, encode
from tests.unit.kafka.test_retry_consumer import (
    POLICY,
    T0,
    Clock,
    FakeDead,
    FakeKafka,
    Raw,
    make,
)

SETTLE = POLICY.max_backoff * (1 + POLICY.jitter) + 1  # every valid record is due by then

valid_keys = st.text(
    st.characters(codec="utf-8") | st.sampled_from("\udc80\udcff\udcfe"), min_size=1, max_size=12
)
valid = st.builds(
    lambda key, attempt, failed_at: ("valid", key, delete_keys(key, **_when(attempt, failed_at))),
    valid_keys,
    st.integers(0, 10**6),
    st.sampled_from([None, "2026-11-01T10:00:00.000Z", "9999-12-31T23:59:59.999Z"]),
)
poison = (
    st.sampled_from(POISONS).map(lambda p: ("poison", None, p.record()))
    | st.sampled_from(RAW_POISONS).map(lambda raw: ("poison", None, raw))
    | st.binary(max_size=64).map(lambda raw: ("poison", None, raw))
    | st.recursive(
        st.none() | st.integers() | st.text(),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
        max_leaves=8,
    ).map(lambda value: ("poison", None, json.dumps(value).encode()))
)


def _when(attempt: int, failed_at: str | None) -> dict[str, Any]:
    return {"attempt": attempt, "failed_at": failed_at} if failed_at else {"attempt": attempt}


def records(entries: Sequence[tuple[str, str | None, Any]]) -> list[Raw]:
    return [
        Raw("retry", 0, offset, b"k", value if isinstance(value, bytes) else encode(value))
        for offset, (_, _, value) in enumerate(entries)
    ]


@settings(max_examples=60, deadline=None)
@given(st.lists(valid | poison, min_size=1, max_size=25))
def test_a_poll_of_valid_and_poison_records_costs_one_dead_letter_per_poison(
    entries: list[tuple[str, str | None, Any]],
) -> None:
    redis, clock = MemoryKeySink(), Clock()
    consumer, kafka, dead = make(redis, clock)
    kafka.incoming = records(entries)
    consumer.poll_once(0)  # one poll holds every record: the poison shares the valid ones' batch
    clock.now += SETTLE
    consumer.poll_once(0)

    poisons = [i for i, (kind, _, _) in enumerate(entries) if kind == "poison"]
    valid_keys = {key for kind, key, _ in entries if kind == "valid"}
    assert [d.source.offset for d in dead.letters] == poisons
    assert all(d.reason == "undecodable" and d.message is None for d in dead.letters)
    assert [d.raw_value for d in dead.letters] == [kafka_value(entries[i]) for i in poisons]
    assert valid_keys <= set(redis.deleted)
    assert consumer.stats.applied == len(entries) - len(poisons)
    assert consumer.pending() == 0
    assert list(kafka.commits[-1].values()) == [len(entries)]


def kafka_value(entry: tuple[str, str | None, Any]) -> bytes:
    value = entry[2]
    return value if isinstance(value, bytes) else encode(value)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.sampled_from(POISONS), min_size=1, max_size=5),
    st.lists(st.sampled_from(EDGE_KEYS), min_size=1, max_size=4),
)
def test_catalogued_poison_between_odd_valid_records(
    poisons: list[Any], edges: list[tuple[str, dict[str, Any]]]
) -> None:
    """The issue's shapes: each edge record applied (surrogate keys as their bytes), each poison alone."""
    redis, clock = MemoryKeySink(), Clock()
    consumer, kafka, dead = make(redis, clock)
    values = [p.record() for p in poisons] + [encode(delete_keys(k, **o)) for k, o in edges]
    kafka.incoming = [Raw("retry", 0, i, b"k", v) for i, v in enumerate(values)]
    consumer.poll_once(0)
    clock.now += SETTLE
    consumer.poll_once(0)
    assert len(dead.letters) == len(poisons)
    assert {k for k, _ in edges} <= set(redis.deleted)
    assert consumer.pending() == 0


class RaisingSearch(MemoryDocumentSink):
    """A sink with a bug that one document trips: it raises instead of reporting a failure."""

    def apply(self, actions: Sequence[DocumentAction]) -> list[DocumentFailure]:
        if any(a.doc_id == "bad" for a in actions):
            raise ValueError("the sink choked on 'bad'")
        return super().apply(actions)


def doc_record(offset: int, doc_id: str) -> Raw:
    action = IndexDoc("users", doc_id, {"n": 1}, BinlogPosition("mysql-bin.000001", 4 + offset))
    when = dt.datetime.fromtimestamp(T0, dt.UTC)
    message = RetryMessage(action, 0, when, when, ErrorInfo("TransientError", "429", True))
    return Raw("retry", 0, offset, doc_id.encode(), encode_message(message))


def consumer_with(
    clock: Clock, redis: MemoryKeySink, search: MemoryDocumentSink, refresher: Any = None
) -> tuple[RetryConsumer, FakeKafka, FakeDead]:
    consumer = RetryConsumer(
        "127.0.0.1:1",
        topic="retry",
        dead_letter_topic="dlq",
        group_id="g",
        redis=redis,  # type: ignore[arg-type]
        search=search,  # type: ignore[arg-type]
        refresher=refresher,
        policy=POLICY,
        clock=clock,
        commit_interval=0.0,
    )
    kafka, dead = FakeKafka(), FakeDead()
    consumer._consumer = kafka
    consumer._dead = dead  # type: ignore[assignment]
    return consumer, kafka, dead


def test_an_exception_from_one_action_is_not_charged_to_its_batch() -> None:
    redis, clock, search = MemoryKeySink(), Clock(), RaisingSearch()
    consumer, kafka, dead = consumer_with(clock, redis, search)
    kafka.incoming = [doc_record(0, "a"), doc_record(1, "bad"), doc_record(2, "b")]
    kafka.incoming.append(Raw("retry", 0, 3, b"k", encode(delete_keys("user:1"))))
    consumer.poll_once(0)
    assert [(d.reason, d.source.offset) for d in dead.letters] == [("permanent", 1)]
    assert "ValueError" in dead.letters[0].error.message
    assert search.get("users", "a") == {"n": 1} and search.get("users", "b") == {"n": 1}
    assert set(redis.deleted) == {"user:1"}  # deleted again in the one-by-one pass: idempotent
    assert consumer.stats.applied == 3


def test_a_refresher_that_raises_for_one_document_fails_only_that_one() -> None:
    class Refresher:
        def refresh(self, actions: Sequence[Any]) -> list[Any]:
            if any(a.doc_id == "bad" for a in actions):
                raise DecodeError("row reference of 'bad' is unreadable")
            return list(actions)

    redis, clock, search = MemoryKeySink(), Clock(), MemoryDocumentSink()
    consumer, kafka, dead = consumer_with(clock, redis, search, Refresher())
    kafka.incoming = [doc_record(0, "a"), doc_record(1, "bad"), doc_record(2, "b")]
    consumer.poll_once(0)
    assert [(d.reason, d.source.offset) for d in dead.letters] == [("permanent", 1)]
    assert search.get("users", "a") is not None and search.get("users", "b") is not None


@given(st.lists(st.sampled_from(POISONS) | st.binary(max_size=32), max_size=10))
def test_the_scheduler_never_raises_and_holds_each_poison_as_one_letter(items: list[Any]) -> None:
    clock = Clock()
    s = Scheduler(POLICY, clock=clock)
    for offset, item in enumerate(items):
        value = item.record() if not isinstance(item, bytes) else item
        assert s.receive(Record("retry", 0, offset, 0, None, value)) is not None
    assert len(s.letters()) == len(items)
    assert s.take_due() == [] and s.complete([Outcome("nobody", "redis")]) == 0
    s.letters_published(len(items))
    assert s.committable() == ({("retry", 0): len(items)} if items else {})


def test_a_future_last_failure_cannot_hold_its_key_beyond_the_longest_backoff() -> None:
    clock = Clock()
    s = Scheduler(POLICY, clock=clock)
    value = encode(delete_keys("k", attempt=2, failed_at="9999-12-31T23:59:59.999Z"))
    s.receive(Record("retry", 0, 0, 0, b"k", value))
    due = s.next_due()
    assert due is not None and due <= clock.now + POLICY.max_backoff * (1 + POLICY.jitter)
    clock.now = due
    (turn,) = s.take_due()
    assert turn.action == DeleteKeys(("k",), turn.action.position)
