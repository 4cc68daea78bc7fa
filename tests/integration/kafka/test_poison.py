"""The retry consumer on the real broker and Redis cannot be crashed by its input.

Every poison shape of the catalogue (tests/unit/kafka/poison.py), raw garbage and
a tombstone are produced between valid records, each of which deletes a real
Redis key, some of them odd but valid (a surrogateescape key, attempt 5000, a
last failure in 9999). The consumer must keep running, dead-letter each poison
exactly once on the dead-letter topic, delete every valid key, commit past it
all, and, restarted (same group, then a new group replaying the topic from the
start), never crash again.
"""

from __future__ import annotations

import collections
import time
import uuid

import pytest
import redis
from kafka import KafkaProducer

from cachesync import RetryPolicy
from cachesync.kafka import list_dead_letters
from cachesync.keys import wire_key
from cachesync.sinks import RedisSink
from tests.integration.kafka.helpers import running_consumer, unique, wait_until
from tests.integration.kafka.test_retry_consumer import committed
from tests.unit.kafka.poison import EDGE_KEYS, POISONS, RAW_POISONS, delete_keys, encode

pytestmark = pytest.mark.services

#: Short backoffs: the valid records with attempt 5000 and a 9999 failure are due within ~1 s.
QUICK = RetryPolicy(attempts=4, min_backoff=0.3, max_backoff=1.0, jitter=0.1)


def test_poison_between_valid_records_costs_one_dead_letter_each_and_never_the_consumer(
    kafka_bootstrap: str,
    topics: tuple[str, str],
    r: redis.Redis,
    redis_sink: RedisSink,
) -> None:
    retry, dead = topics
    tag = uuid.uuid4().hex[:8]
    poison_values: list[bytes | None] = [p.record(f"poison:{tag}") for p in POISONS]
    poison_values += [*RAW_POISONS, None]  # None: a tombstone
    valid_keys: list[str] = []
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    offsets: dict[str, list[int]] = {"poison": [], "valid": []}
    sent = 0

    def send(kind: str, key: bytes, value: bytes | None) -> None:
        nonlocal sent
        meta = producer.send(retry, key=key, value=value).get(10)
        offsets[kind].append(meta.offset)
        sent += 1

    edges = iter(EDGE_KEYS)
    for i, value in enumerate(poison_values):
        edge = next(edges, None)
        key, options = (f"{edge[0]}:{tag}", edge[1]) if edge else (f"valid:{tag}:{i}", {})
        valid_keys.append(key)
        send("valid", wire_key(key), encode(delete_keys(key, **options)))
        send("poison", f"poison:{tag}".encode(), value)
    tail = f"valid:{tag}:tail"
    valid_keys.append(tail)
    send("valid", tail.encode(), encode(delete_keys(tail)))
    producer.close()
    wires = [wire_key(k) for k in valid_keys]
    r.mset({w: "stale" for w in wires})
    group = unique("g")

    def remaining() -> int:
        return int(r.exists(*wires))

    with running_consumer(
        kafka_bootstrap,
        topic=retry,
        dead_letter_topic=dead,
        redis=redis_sink,
        search=None,
        policy=QUICK,
        group_id=group,
    ) as consumer:
        wait_until(
            "every valid key deleted",
            lambda: remaining() == 0,
            30,
            explain=lambda: f"{remaining()} of {len(wires)} left; {consumer.stats}",
        )
        wait_until(
            "every poison dead-lettered",
            lambda: consumer.stats.dead_lettered == len(poison_values),
            20,
            explain=lambda: str(consumer.stats),
        )
        wait_until(
            "offsets committed", lambda: committed(kafka_bootstrap, group, retry) == sent, 10
        )
        assert consumer.stats.undecodable == len(poison_values)
        assert consumer.stats.applied == len(valid_keys)

    letters = list_dead_letters(kafka_bootstrap, dead)
    assert len(letters) == len(poison_values)
    assert all(s.letter is not None and s.letter.reason == "undecodable" for s in letters)
    assert sorted(s.letter.source.offset for s in letters if s.letter) == offsets["poison"]
    raw = collections.Counter(s.letter.raw_value for s in letters if s.letter)
    assert raw == collections.Counter(poison_values)  # the original bytes, untouched

    # Restarted in the same group: it resumes past everything and finds nothing to crash on.
    r.mset({w: "stale" for w in wires})
    with running_consumer(
        kafka_bootstrap,
        topic=retry,
        dead_letter_topic=dead,
        redis=redis_sink,
        search=None,
        policy=QUICK,
        group_id=group,
    ) as again:
        wait_until("the partition assigned again", lambda: _assigned(again), 20)
        time.sleep(2.0)  # polls from the committed offset: there is nothing after it
    assert again.stats.dead_lettered == 0 and again.stats.applied == 0
    assert remaining() == len(wires)  # nothing re-applied: nothing was replayed
    assert len(list_dead_letters(kafka_bootstrap, dead)) == len(poison_values)

    # A new group replays the whole topic: every poison once more, still no crash.
    with running_consumer(
        kafka_bootstrap,
        topic=retry,
        dead_letter_topic=dead,
        redis=redis_sink,
        search=None,
        policy=QUICK,
    ) as replay:
        wait_until("replayed keys deleted", lambda: remaining() == 0, 30)
        wait_until(
            "replayed poison dead-lettered",
            lambda: replay.stats.dead_lettered == len(poison_values),
            20,
            explain=lambda: str(replay.stats),
        )
    assert replay.stats.applied == len(valid_keys)
    assert len(list_dead_letters(kafka_bootstrap, dead)) == 2 * len(poison_values)


def _assigned(consumer: object) -> bool:
    """True once the consumer's group join gave it its partition."""
    kafka = getattr(consumer, "_consumer", None)
    return kafka is not None and bool(kafka.assignment())
