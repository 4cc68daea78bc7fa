"""send_and_wait / AckedProducer: one bounded wait, errors translated, against a fake producer."""

from __future__ import annotations

from typing import Any

import pytest
from kafka import errors as kerr

from cachesync.errors import PermanentError, TransientError
from cachesync.kafka import client
from cachesync.kafka.client import AckedProducer, Delivery, Outgoing, send_and_wait


class Meta:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self.topic, self.partition, self.offset = topic, partition, offset


class Future:
    def __init__(self, producer: FakeProducer, meta: Meta) -> None:
        self.producer, self.meta = producer, meta

    def get(self, timeout: float) -> Meta:
        self.producer.waits.append(timeout)
        if self.producer.fail is not None:
            raise self.producer.fail
        return self.meta


class FakeProducer:
    def __init__(self, clock: Clock | None = None, flush_takes: float = 0.0) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None]] = []
        self.flushes: list[float] = []
        self.waits: list[float] = []
        self.fail: BaseException | None = None
        self.clock, self.flush_takes = clock, flush_takes
        self.closed: list[float] = []

    def send(self, topic: str, key: bytes | None, value: bytes | None) -> Future:
        self.sent.append((topic, key, value))
        return Future(self, Meta(topic, 0, len(self.sent) - 1))

    def flush(self, timeout: float) -> None:
        self.flushes.append(timeout)
        if self.clock is not None:
            self.clock.now += self.flush_takes

    def partitions_for(self, topic: str) -> set[int]:
        return {0} if topic == "there" else set()

    def close(self, timeout: float) -> None:
        self.closed.append(timeout)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


RECORDS = [Outgoing("t", b"k1", b"v1"), Outgoing("t", None, b"v2")]


def test_every_record_is_sent_and_acknowledged_in_order() -> None:
    producer = FakeProducer()
    deliveries = send_and_wait(producer, RECORDS, timeout=5.0, what="x")
    assert producer.sent == [("t", b"k1", b"v1"), ("t", None, b"v2")]
    assert deliveries == [Delivery("t", 0, 0), Delivery("t", 0, 1)]


def test_the_wait_is_one_deadline_for_all_records_not_one_per_record() -> None:
    clock = Clock()
    producer = FakeProducer(clock, flush_takes=4.0)
    send_and_wait(producer, RECORDS, timeout=5.0, what="x", clock=clock)
    assert producer.flushes == [5.0]
    assert producer.waits == [pytest.approx(1.0), pytest.approx(1.0)]


def test_past_the_deadline_the_acks_are_polled_not_waited_for() -> None:
    clock = Clock()
    producer = FakeProducer(clock, flush_takes=9.0)
    send_and_wait(producer, RECORDS, timeout=5.0, what="x", clock=clock)
    assert producer.waits == [0.001, 0.001]


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (kerr.KafkaTimeoutError("no ack"), TransientError),
        (kerr.KafkaConnectionError("gone"), TransientError),
        (ConnectionRefusedError("refused"), TransientError),
        (kerr.MessageSizeTooLargeError("big"), PermanentError),
    ],
)
def test_kafka_errors_become_cachesync_errors_naming_the_operation(
    raised: BaseException, expected: type[Exception]
) -> None:
    producer = FakeProducer()
    producer.fail = raised
    with pytest.raises(expected, match="publishing 2 things"):
        send_and_wait(producer, RECORDS, timeout=1.0, what="publishing 2 things")


def test_nothing_to_send_touches_nothing() -> None:
    assert send_and_wait(None, [], timeout=1.0, what="x") == []
    assert AckedProducer("127.0.0.1:1", timeout=1.0, client_id="c").send([], what="x") == []


def test_acked_producer_connects_lazily_and_drops_a_producer_that_failed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[FakeProducer] = []

    def make_producer(bootstrap: str, **config: Any) -> FakeProducer:
        made.append(FakeProducer())
        return made[-1]

    monkeypatch.setattr(client, "make_producer", make_producer)
    kafka = AckedProducer("b:1", timeout=2.0, client_id="c")
    assert made == []
    kafka.send(RECORDS, what="x")
    made[0].fail = kerr.KafkaTimeoutError("no ack")
    with pytest.raises(TransientError):
        kafka.send(RECORDS, what="x")
    assert made[0].closed == [0.0]  # dropped at once, not flushed for the timeout
    kafka.send(RECORDS, what="x")
    assert len(made) == 2 and len(made[1].sent) == 2
    kafka.check("there")
    with pytest.raises(TransientError, match="no partitions for gone"):
        kafka.check("gone")
    kafka.close()
    assert made[1].closed == [2.0]
