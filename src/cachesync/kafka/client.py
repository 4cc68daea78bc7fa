"""The kafka-python adapter: clients with bounded waits, and errors translated at the border.

Everything in :mod:`cachesync.kafka` talks to kafka-python through this module.
kafka-python exceptions never leave it: :func:`kafka_errors` turns them into
:class:`~cachesync.errors.TransientError` (try later: broker unreachable, timeout,
rebalance) or :class:`~cachesync.errors.PermanentError` /
:class:`~cachesync.errors.ConfigurationError` (authorisation, unknown topic,
record too large: waiting will not help).

Producers use ``acks='all'`` and kafka-python's idempotent producer, which it
enables by itself when the broker supports it (Kafka >= 0.11; tansu does) and
disables with a warning otherwise. Every blocking call is bounded:
``max_block_ms`` for metadata/buffer waits, ``bootstrap_timeout_ms`` when the
client is built while the broker is down, ``delivery_timeout_ms`` overall.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import CacheSyncError, ConfigurationError, PermanentError, TransientError

__all__ = [
    "AckedProducer",
    "Delivery",
    "Outgoing",
    "Record",
    "close_producer",
    "ensure_topics",
    "kafka_errors",
    "make_consumer",
    "make_producer",
    "read_topic",
    "send_and_wait",
    "to_record",
]

log = logging.getLogger("cachesync.kafka")


@dataclass(frozen=True)
class Record:
    """A consumed record, free of kafka-python types."""

    topic: str
    partition: int
    offset: int
    timestamp: int | None
    key: bytes | None
    value: bytes | None


def to_record(raw: Any) -> Record:
    return Record(raw.topic, raw.partition, raw.offset, raw.timestamp, raw.key, raw.value)


def translate(exc: BaseException, what: str) -> CacheSyncError:
    """The cachesync error for a kafka-python (or socket) exception."""
    from kafka import errors as kerr

    message = f"Kafka: {what}: {type(exc).__name__}: {exc}"
    if isinstance(exc, kerr.AuthorizationError | kerr.KafkaConfigurationError):
        return ConfigurationError(message, setting="kafka_bootstrap")
    if isinstance(
        exc,
        kerr.MessageSizeTooLargeError
        | kerr.RecordListTooLargeError
        | kerr.InvalidTopicError
        | kerr.UnsupportedVersionError,
    ):
        return PermanentError(message)
    return TransientError(message)


@contextlib.contextmanager
def kafka_errors(what: str) -> Iterator[None]:
    """Translate kafka-python and socket errors raised inside the block (see module doc)."""
    from kafka import errors as kerr

    try:
        yield
    except CacheSyncError:
        raise
    except (kerr.KafkaError, OSError, AssertionError) as exc:
        # AssertionError: kafka-python asserts on some states reached by a vanished broker.
        raise translate(exc, what) from exc


def _servers(bootstrap: str) -> list[str]:
    return [s.strip() for s in bootstrap.split(",") if s.strip()]


def make_producer(
    bootstrap: str, *, timeout: float = 5.0, client_id: str = "cachesync", **overrides: Any
) -> Any:
    """A ``KafkaProducer`` (bytes in, bytes out) whose every wait is bounded by about *timeout*.

    Raises :class:`TransientError` when the broker cannot be reached in time.
    """
    from kafka import KafkaProducer

    ms = max(1000, int(timeout * 1000))
    config: dict[str, Any] = {
        "bootstrap_servers": _servers(bootstrap),
        "client_id": client_id,
        "acks": "all",
        "linger_ms": 5,
        "max_block_ms": ms,
        "request_timeout_ms": ms,
        "delivery_timeout_ms": max(30000, 2 * ms + 5),
        "bootstrap_timeout_ms": ms,
        "reconnect_backoff_max_ms": 1000,
    }
    config.update(overrides)
    with kafka_errors(f"connecting a producer to {bootstrap}"):
        return KafkaProducer(**config)


def close_producer(producer: Any, timeout: float) -> None:
    """Close *producer* within about *timeout* seconds, even when its broker is gone.

    kafka-python's ``close()`` flushes first, and a flush that times out raises
    before the I/O thread is stopped; that thread would then retry its records
    until ``delivery_timeout_ms`` and linger on. So on a timeout the pending
    records are dropped (the caller has stored them elsewhere, or will resend)
    and the I/O thread is stopped.
    """
    try:
        producer.close(timeout=timeout)
    except Exception:
        sender = getattr(producer, "_sender", None)  # no public force-close in kafka-python
        if sender is not None:
            with contextlib.suppress(Exception):
                sender.force_close()
                sender.join(max(0.1, timeout))


@dataclass(frozen=True)
class Outgoing:
    """A record to produce: topic, key, value (bytes; ``None`` for no key or a tombstone)."""

    topic: str
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class Delivery:
    """Where an acknowledged record was stored."""

    topic: str
    partition: int
    offset: int


def send_and_wait(
    producer: Any,
    records: Sequence[Outgoing],
    *,
    timeout: float,
    what: str,
    clock: Callable[[], float] = time.monotonic,
) -> list[Delivery]:
    """Send *records* with *producer* and wait for every acknowledgement, in order.

    Blocks for at most about *timeout* seconds in all, plus what ``send()`` may
    block on metadata or buffer space (the producer's ``max_block_ms``;
    :func:`make_producer` sets it to its own timeout). Raises
    :class:`~cachesync.errors.TransientError` when the broker is unreachable or
    does not acknowledge in time, :class:`~cachesync.errors.PermanentError` when
    waiting will not help (record too large, invalid topic); *what* names the
    operation in the message. On an error some records may still have been
    stored (and may yet be, by the producer's own retries): a caller that
    stores them elsewhere must accept duplicates. Success means every record
    was acknowledged with the producer's ``acks`` (``all`` from :func:`make_producer`).
    """
    if not records:
        return []
    deadline = clock() + timeout
    with kafka_errors(what):
        futures = [producer.send(r.topic, key=r.key, value=r.value) for r in records]
        producer.flush(timeout=max(0.0, deadline - clock()))
        metas = [future.get(timeout=max(0.001, deadline - clock())) for future in futures]
    return [Delivery(m.topic, m.partition, m.offset) for m in metas]


class AckedProducer:
    """A lazily connected producer whose sends wait for ``acks=all`` (:func:`send_and_wait`).

    Constructing one never touches the network; the first :meth:`send` (or
    :meth:`check`) connects, which may block up to about *timeout* and raises
    :class:`~cachesync.errors.TransientError` when the broker cannot be reached.
    After a failed send the producer is dropped (closed without waiting), so the
    next send starts from clean metadata and state. Thread-safe.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        timeout: float,
        client_id: str,
        options: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bootstrap = bootstrap
        self.timeout = timeout
        self.client_id = client_id
        self.options = dict(options or {})
        self.clock = clock
        self._lock = threading.Lock()
        self._producer: Any = None

    def _get(self) -> Any:
        with self._lock:
            if self._producer is None:
                self._producer = make_producer(
                    self.bootstrap, timeout=self.timeout, client_id=self.client_id, **self.options
                )
            return self._producer

    def send(
        self, records: Sequence[Outgoing], *, what: str, deadline: float | None = None
    ) -> list[Delivery]:
        """Send and wait for every acknowledgement by *deadline* (on :attr:`clock`), else ``timeout``.

        Raises as :func:`send_and_wait` does, after dropping the producer.
        """
        if not records:
            return []
        if deadline is None:
            deadline = self.clock() + self.timeout
        try:
            producer = self._get()
            return send_and_wait(
                producer,
                records,
                timeout=max(0.0, deadline - self.clock()),
                what=what,
                clock=self.clock,
            )
        except CacheSyncError:
            self.close(timeout=0.0)
            raise

    def check(self, topic: str) -> None:
        """Connect if needed and fetch *topic*'s partitions; raises :class:`TransientError` if absent."""
        producer = self._get()
        with kafka_errors(f"fetching metadata of {topic}"):
            if not producer.partitions_for(topic):
                raise TransientError(f"Kafka: no partitions for {topic}")

    def close(self, timeout: float | None = None) -> None:
        """Flush and close within *timeout* (default ``timeout``); see :func:`close_producer`."""
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            close_producer(producer, self.timeout if timeout is None else timeout)


def make_consumer(bootstrap: str, *, client_id: str = "cachesync", **overrides: Any) -> Any:
    """A ``KafkaConsumer`` with manual commits; *overrides* are kafka-python settings."""
    from kafka import KafkaConsumer

    config: dict[str, Any] = {
        "bootstrap_servers": _servers(bootstrap),
        "client_id": client_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "reconnect_backoff_max_ms": 1000,
    }
    config.update(overrides)
    with kafka_errors(f"connecting a consumer to {bootstrap}"):
        return KafkaConsumer(**config)


def ensure_topics(
    bootstrap: str,
    topics: Mapping[str, Mapping[str, str]],
    *,
    partitions: int = 6,
    replication_factor: int = -1,
    timeout: float = 10.0,
) -> list[str]:
    """Create the *topics* (name -> topic configs) that do not exist; returns those created.

    ``replication_factor=-1`` asks for the broker's default (Kafka 2.4+).
    """
    from kafka import KafkaAdminClient
    from kafka import errors as kerr
    from kafka.admin import NewTopic

    with kafka_errors(f"creating topics {', '.join(topics)}"):
        admin = KafkaAdminClient(
            bootstrap_servers=_servers(bootstrap),
            client_id="cachesync-admin",
            request_timeout_ms=int(timeout * 1000),
        )
        try:
            existing = set(admin.list_topics())
            missing = [name for name in topics if name not in existing]
            if not missing:
                return []
            new = [
                NewTopic(
                    name,
                    num_partitions=partitions,
                    replication_factor=replication_factor,
                    topic_configs=dict(topics[name]),
                )
                for name in missing
            ]
            with contextlib.suppress(kerr.TopicAlreadyExistsError):  # another process won
                admin.create_topics(new)
            log.info("cachesync: created Kafka topic(s) %s", ", ".join(missing))
            return missing
        finally:
            admin.close()


def read_topic(
    bootstrap: str,
    topic: str,
    *,
    timeout: float = 10.0,
    idle: float = 0.6,
    partitions: Sequence[int] | None = None,
) -> Iterator[Record]:
    """Every record of *topic* from the beginning to its current end, without a group.

    The end is where polls come back empty AND every partition's position has
    reached ``end_offsets()``. Both conditions: some brokers (tansu) report a
    lower end offset than they serve, and an empty poll alone can be a slow fetch.
    Raises :class:`TransientError` if the topic cannot be reached within *timeout*.
    """
    from kafka import TopicPartition

    consumer = make_consumer(bootstrap, client_id="cachesync-reader")
    try:
        with kafka_errors(f"reading {topic}"):
            deadline = time.monotonic() + timeout
            ids: set[int] | None = None
            while ids is None:
                ids = consumer.partitions_for_topic(topic)
                if ids is None:
                    if time.monotonic() > deadline:
                        raise TransientError(f"Kafka: topic {topic!r} not found or unreachable")
                    time.sleep(0.1)
            chosen = sorted(ids if partitions is None else set(partitions) & ids)
            tps = [TopicPartition(topic, p) for p in chosen]
            if not tps:
                return
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            ends = consumer.end_offsets(tps)
            quiet_since: float | None = None
            while True:
                batch = consumer.poll(timeout_ms=int(idle * 500), max_records=1000)
                got = False
                for records in batch.values():
                    for raw in records:
                        got = True
                        yield to_record(raw)
                now = time.monotonic()
                if got:
                    quiet_since = None
                    continue
                caught_up = all(consumer.position(tp) >= ends.get(tp, 0) for tp in tps)
                quiet_since = quiet_since if quiet_since is not None else now
                if caught_up and now - quiet_since >= idle:
                    return
                if not caught_up and now - quiet_since > timeout:
                    raise TransientError(f"Kafka: reading {topic} stalled before its end")
    finally:
        with contextlib.suppress(Exception):
            consumer.close(autocommit=False)
