"""RetryQueue's policy and circuit, with Kafka and the outbox faked and the clock injected."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from cachesync import DeleteKeys, Failure, HandOffError
from cachesync.errors import ConfigurationError, TransientError
from cachesync.kafka import RetryQueue
from cachesync.kafka.client import Delivery, Outgoing
from cachesync.policies import RetryQueuePolicy


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeKafka:
    """Stands in for AckedProducer."""

    def __init__(self, down: bool) -> None:
        self.down = down
        self.sent: list[Outgoing] = []
        self.deadlines: list[float | None] = []
        self.closed = 0

    def send(
        self, records: Sequence[Outgoing], *, what: str, deadline: float | None = None
    ) -> list[Delivery]:
        self.deadlines.append(deadline)
        if self.down:
            raise TransientError(f"Kafka: {what}: KafkaTimeoutError")
        self.sent += records
        return [Delivery(r.topic, 0, i) for i, r in enumerate(records)]

    def check(self, topic: str) -> None:
        if self.down:
            raise TransientError("Kafka: no partitions")

    def close(self, timeout: float | None = None) -> None:
        self.closed += 1


class FakeOutbox:
    def __init__(self) -> None:
        self.rows: list[tuple[str, list[Any], int, str]] = []

    def add(
        self, kind: str, actions: list[Any], *, attempts: int, last_error: str, state: str
    ) -> None:
        assert state == "pending"  # these failures are transient
        self.rows.append((kind, actions, attempts, last_error))


FAILURES = [Failure(DeleteKeys(("a", "b")), TransientError("Redis down"), attempts=2)]


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"timeout": 0}, "RetryQueuePolicy.timeout"),
        ({"cooldown_min": -1}, "RetryQueuePolicy.cooldown_min"),
        ({"cooldown_max": 0}, "RetryQueuePolicy.cooldown_max"),
        ({"cooldown_min": 5, "cooldown_max": 2}, "RetryQueuePolicy.cooldown_min"),
    ],
)
def test_an_invalid_policy_fails_naming_the_field(fields: dict[str, float], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        RetryQueuePolicy(**fields)


def test_the_cooldown_doubles_from_min_to_max_without_jitter() -> None:
    backoff = RetryQueuePolicy.DEFAULT.cooldown
    assert [backoff.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_the_timeout_keyword_replaces_the_policys_and_is_validated_like_it() -> None:
    queue = RetryQueue("127.0.0.1:1", "t", timeout=2.5)
    assert queue.timeout == 2.5 and queue.policy.cooldown_max == 30.0
    with pytest.raises(ConfigurationError, match="RetryQueuePolicy.timeout"):
        RetryQueue("127.0.0.1:1", "t", timeout=0)
    with pytest.raises(ValueError, match="bootstrap, an outbox, or both"):
        RetryQueue(None, "t")


def test_a_hand_off_waits_for_kafka_at_most_the_timeout() -> None:
    clock = Clock()
    queue = RetryQueue("b:1", "retry", policy=RetryQueuePolicy(timeout=3.0), clock=clock)
    kafka = FakeKafka(down=False)
    queue._kafka = kafka  # type: ignore[assignment]
    queue.handle(FAILURES)
    assert [r.key for r in kafka.sent] == [b"a", b"b"]
    assert kafka.deadlines == [1003.0]


def test_the_circuit_waits_the_cooldown_between_probes_and_resets_when_kafka_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock, outbox = Clock(), FakeOutbox()
    policy = RetryQueuePolicy(timeout=1.0, cooldown_min=1.0, cooldown_max=4.0)
    queue = RetryQueue("b:1", "retry", outbox=outbox, policy=policy, clock=clock)  # type: ignore[arg-type]
    queue._kafka = FakeKafka(down=True)  # type: ignore[assignment]
    probes: list[FakeKafka] = []

    def new_probe() -> FakeKafka:
        probes.append(FakeKafka(down=len(probes) < 3))
        return probes[-1]

    monkeypatch.setattr(queue, "_new_producer", new_probe)
    queue.handle(FAILURES)
    assert not queue.kafka_available() and len(outbox.rows) == 1
    waits = []
    for _ in range(3):  # three failed checks: 2, 4, then capped at 4
        queue._run_probe()
        waits.append(queue._next_probe - clock.now)
    assert waits == [2.0, 4.0, 4.0] and all(p.closed == 1 for p in probes)
    queue._run_probe()
    assert queue.kafka_available() and queue._failed_checks == 0
    queue.handle(FAILURES)
    assert len(probes[-1].sent) == 2  # the probe's producer carries on
    probes[-1].down = True
    queue.handle(FAILURES)
    assert queue._next_probe - clock.now == 1.0  # back to the first cooldown


def test_without_an_outbox_an_open_circuit_is_backpressure() -> None:
    queue = RetryQueue("b:1", "retry", clock=Clock())
    queue._kafka = FakeKafka(down=True)  # type: ignore[assignment]
    for _ in range(2):
        with pytest.raises(HandOffError, match="no outbox is configured"):
            queue.handle(FAILURES)  # the second within the cooldown: no probe, no wait
