"""The retry consumer's glue (poll, apply, dead-letter, commit, pause) with Kafka and sinks faked.

The scheduling rules themselves are tested on the pure scheduler in test_scheduler.py.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from kafka import TopicPartition

from cachesync import DeleteKeys, RetryPolicy, TransientError
from cachesync.kafka import RetryConsumer
from cachesync.kafka.codec import DeadLetter, ErrorInfo, RetryMessage, encode_message
from cachesync.kafka.retry_consumer import DEAD_LETTER_WAIT
from cachesync.testing import MemoryKeySink

POLICY = RetryPolicy(attempts=3, min_backoff=10.0, max_backoff=40.0, jitter=0.0)
T0 = 1_800_000_000.0


@dataclass
class Raw:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int = 0


class FakeKafka:
    """Just enough of KafkaConsumer: queued records, commits, pause/resume."""

    def __init__(self) -> None:
        self.incoming: list[Raw] = []
        self.commits: list[dict[Any, int]] = []
        self.paused_: set[Any] = set()

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, list[Raw]]:
        out: dict[Any, list[Raw]] = {}
        for raw in self.incoming:
            out.setdefault(TopicPartition(raw.topic, raw.partition), []).append(raw)
        self.incoming = []
        return out

    def commit(self, offsets: dict[Any, Any]) -> None:
        self.commits.append({tp: meta.offset for tp, meta in offsets.items()})

    def assignment(self) -> set[Any]:
        return {TopicPartition("retry", 0)}

    def pause(self, *tps: Any) -> None:
        self.paused_.update(tps)

    def resume(self, *tps: Any) -> None:
        self.paused_.difference_update(tps)

    def paused(self) -> set[Any]:
        return set(self.paused_)

    def close(self, autocommit: bool = False) -> None:
        pass


class FakeDead:
    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []
        self.down = False
        self.calls = 0

    def publish(self, letters: Sequence[DeadLetter]) -> None:
        self.calls += 1
        if self.down:
            raise TransientError("Kafka: publishing dead letters: KafkaTimeoutError")
        self.letters.extend(letters)

    def close(self, timeout: float | None = None) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def make(
    redis: MemoryKeySink, clock: Clock, **options: Any
) -> tuple[RetryConsumer, FakeKafka, FakeDead]:
    consumer = RetryConsumer(
        "127.0.0.1:1",
        topic="retry",
        dead_letter_topic="dlq",
        group_id="g",
        redis=redis,  # type: ignore[arg-type]
        search=None,
        policy=POLICY,
        clock=clock,
        commit_interval=0.0,
        **options,
    )
    kafka, dead = FakeKafka(), FakeDead()
    consumer._consumer = kafka
    consumer._dead = dead  # type: ignore[assignment]
    return consumer, kafka, dead


def record(offset: int, key: str, attempt: int = 1, failed_at: float = T0) -> Raw:
    when = dt.datetime.fromtimestamp(failed_at, dt.UTC)
    error = ErrorInfo("TransientError", "down", True)
    message = RetryMessage(DeleteKeys((key,)), attempt, when, when, error, {"component": "test"})
    return Raw("retry", 0, offset, key.encode(), encode_message(message))


def test_records_wait_for_their_backoff_then_apply_and_commit() -> None:
    redis, clock = MemoryKeySink(), Clock()
    consumer, kafka, _ = make(redis, clock)
    kafka.incoming = [record(0, "a"), record(1, "b")]
    consumer.poll_once(0)
    assert redis.calls == [] and consumer.pending() == 2
    clock.now += POLICY.backoff(1)
    consumer.poll_once(0)
    assert redis.calls == [["a", "b"]]  # one UNLINK for every due key
    assert kafka.commits[-1] == {TopicPartition("retry", 0): 2}


def test_a_waiting_key_holds_the_commit_but_not_other_keys() -> None:
    redis, clock = MemoryKeySink(), Clock()
    consumer, kafka, _ = make(redis, clock)
    kafka.incoming = [record(0, "slow", attempt=2), record(1, "x"), record(2, "y")]
    clock.now += POLICY.backoff(1)
    consumer.poll_once(0)
    assert redis.calls == [["x", "y"]]
    assert kafka.commits == [] or kafka.commits[-1] == {TopicPartition("retry", 0): 0}
    clock.now = T0 + 100 + POLICY.backoff(1)
    consumer.poll_once(0)
    assert redis.calls[-1] == ["slow"]
    assert kafka.commits[-1] == {TopicPartition("retry", 0): 3}


def test_same_key_records_never_overtake_and_are_coalesced() -> None:
    redis, clock = MemoryKeySink(), Clock()
    consumer, kafka, _ = make(redis, clock)
    # an old record waiting for a long backoff, then a fresh one (redriven: due now)
    kafka.incoming = [record(0, "k", attempt=2), record(1, "k", attempt=0)]
    consumer.poll_once(0)
    assert redis.calls == []  # the fresh one waits behind the old one
    clock.now += POLICY.backoff(2)
    consumer.poll_once(0)
    assert redis.calls == [["k"]]  # both in one delete
    assert consumer.stats.applied == 2


def test_exhausted_records_are_dead_lettered_with_their_attempts() -> None:
    redis, clock = MemoryKeySink(), Clock()
    redis.down = True
    consumer, kafka, dead = make(redis, clock)
    kafka.incoming = [record(0, "k")]
    for _ in range(4):
        clock.now += POLICY.max_backoff
        consumer.poll_once(0)
    (letter,) = dead.letters
    assert letter.reason == "exhausted" and letter.message is not None
    assert letter.message.attempt == POLICY.attempts
    assert letter.source.offset == 0 and letter.error.transient
    assert kafka.commits[-1] == {TopicPartition("retry", 0): 1}


def test_undecodable_record_is_dead_lettered_and_the_partition_flows() -> None:
    redis, clock = MemoryKeySink(), Clock()
    consumer, kafka, dead = make(redis, clock)
    kafka.incoming = [Raw("retry", 0, 0, b"x", b"{oops"), record(1, "a", attempt=0)]
    consumer.poll_once(0)
    assert [d.reason for d in dead.letters] == ["undecodable"]
    assert dead.letters[0].raw_value == b"{oops"
    assert redis.calls == [["a"]]
    assert kafka.commits[-1] == {TopicPartition("retry", 0): 2}


def test_unacknowledged_dead_letters_hold_the_commit_and_are_republished_after_a_wait() -> None:
    redis, clock = MemoryKeySink(), Clock()
    consumer, kafka, dead = make(redis, clock)
    dead.down = True
    kafka.incoming = [Raw("retry", 0, 0, b"x", b"{oops"), record(1, "a", attempt=0)]
    with pytest.raises(TransientError):
        consumer.poll_once(0)
    assert redis.calls == [["a"]] and consumer.pending() == 1
    consumer.poll_once(0)  # within the wait: not tried again
    assert dead.calls == 1
    assert all(c[TopicPartition("retry", 0)] == 0 for c in kafka.commits)
    dead.down = False
    clock.now += DEAD_LETTER_WAIT.delay(1)
    consumer.poll_once(0)
    assert [d.reason for d in dead.letters] == ["undecodable"]
    assert consumer.stats.dead_lettered == 1 and consumer.pending() == 0
    assert kafka.commits[-1] == {TopicPartition("retry", 0): 2}


def test_a_sink_that_answers_again_wakes_every_key_waiting_on_it() -> None:
    redis, clock = MemoryKeySink(), Clock()
    consumer, kafka, _ = make(redis, clock)
    redis.down = True
    kafka.incoming = [record(0, "a"), record(1, "b")]
    clock.now += POLICY.backoff(1)
    consumer.poll_once(0)  # both fail: next try in backoff(2) = 20 s
    redis.down = False
    kafka.incoming = [record(2, "c", attempt=0)]  # a fresh record succeeds at once...
    consumer.poll_once(0)
    consumer.poll_once(0)  # ...and the waiting keys follow without their 20 s backoff
    assert [sorted(c) for c in redis.calls[-2:]] == [["c"], ["a", "b"]]
    assert consumer.pending() == 0


def test_intake_pauses_above_max_pending() -> None:
    redis, clock = MemoryKeySink(), Clock()
    consumer, kafka, _ = make(redis, clock, max_pending=4)
    kafka.incoming = [record(i, f"k{i}", attempt=2) for i in range(5)]
    consumer.poll_once(0)
    assert kafka.paused()
    clock.now = T0 + 100 + POLICY.backoff(1)
    consumer.poll_once(0)
    assert not kafka.paused()


def test_revoked_partitions_forget_their_waiting_records() -> None:
    redis, clock = MemoryKeySink(), Clock()
    consumer, kafka, _ = make(redis, clock)
    kafka.incoming = [record(0, "a", attempt=2)]
    consumer.poll_once(0)
    consumer._revoked([("retry", 0)])
    assert consumer.pending() == 0
