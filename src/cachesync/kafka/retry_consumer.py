""":class:`RetryConsumer`: applies the retry topic with backoff, per-key order, and a dead-letter topic.

How it keeps the three promises of the retry path:

**Nothing lost.** Offsets are committed by hand, per partition, up to the first
record that is neither applied nor acknowledged by the dead-letter topic. A
crash replays from there; actions are idempotent, so a replay only repeats work.

**Per-key order without head-of-line blocking.** Records are grouped in memory
by their key (a cache key, or ``index/doc_id``) into FIFO queues. While a key
waits for its backoff, records of other keys on the same partition flow past
it; records of the SAME key queue behind it and are never applied before it.
When a key's turn comes, its whole queue is applied as one coalesced action: one
``UNLINK`` of the key, or one write of the document re-read from the database at
the newest version in the queue. Coalescing is exact: deleting a key twice is
deleting it once, and every re-read document is the row's current state. We
chose this over re-publishing delayed records with a not-before time (the
Spring/Uber "retry topic per delay" pattern) because a re-published record lands
behind newer records of its key and would overtake order; in memory the order is
simply the partition's order. The price is that a waiting key holds back the
committed offset of its partition (replayed after a crash) and that the
in-memory backlog is bounded by ``max_pending`` (partitions are paused above it).

**Converge to the database, not to old events.** Document actions are refreshed
through :class:`~cachesync.reread.Refresher` before every attempt: the row is
re-read by primary key and its CURRENT projection indexed with the action's own
external version, or the document deleted when the row is gone or no longer
matches ``when`` (DESIGN.md §3). A stale retry loses to a newer write by version
(409 counts as success) and never resurrects a deleted row.

Backoff follows :class:`~cachesync.policies.RetryPolicy`: a record that has
failed ``n`` times is due ``backoff(n)`` after its last failure; after
``policy.attempts`` failures it is dead-lettered with its full context. A
:class:`~cachesync.errors.PermanentError` (a mapping error, a table no model
declares) is dead-lettered at once, and an undecodable record too: it never
blocks its partition. When a sink that was failing succeeds again (Redis is
back), every key waiting on that sink becomes due at once instead of sleeping
out its backoff: convergence after an outage takes one round trip, not the
longest backoff.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import heapq
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import metrics
from ..actions import Action, DeleteKeys
from ..apply import Applier
from ..errors import CacheSyncError, DecodeError, TransientError
from ..policies import ImmediateRetryPolicy, RetryPolicy
from ..reread import Refresher
from ..sinks.elasticsearch import SearchSink
from ..sinks.redis import RedisSink
from .client import Record, kafka_errors, make_consumer, to_record
from .codec import (
    REASON_EXHAUSTED,
    REASON_PERMANENT,
    REASON_UNDECODABLE,
    DeadLetter,
    ErrorInfo,
    RecordRef,
    RetryMessage,
    decode_message,
    message_key,
)
from .dead_letter import DeadLetterPublisher

if TYPE_CHECKING:
    from ..config import Settings
    from ..registry import Registry

__all__ = ["ConsumerStats", "RetryConsumer", "default_group"]

log = logging.getLogger("cachesync.kafka")

_Partition = tuple[str, int]
SINK_REDIS = "redis"
SINK_SEARCH = "search"
SINK_DATABASE = "database"


def default_group(pipeline: str) -> str:
    """The consumer group of a pipeline's retry consumers."""
    return f"cachesync-retry.{pipeline}"


@dataclass
class _Item:
    """One retry record held in memory until it is applied or dead-lettered."""

    partition: _Partition
    offset: int
    timestamp: int | None
    message: RetryMessage
    due: float
    sink: str | None = None


@dataclass
class ConsumerStats:
    """Counters of one consumer's life (also fed to :mod:`cachesync.metrics`)."""

    received: int = 0
    attempts: int = 0
    applied: int = 0
    dead_lettered: int = 0
    undecodable: int = 0
    commits: int = 0
    pending: int = 0


class _Offsets:
    """Offsets of one partition received but not yet finished; the committable offset.

    The committable offset is the lowest unfinished one (or one past the highest
    seen): committing more would lose a record that is still waiting.
    """

    def __init__(self) -> None:
        self.open: set[int] = set()
        self.heap: list[int] = []
        self.next = -1
        self.committed = -1

    def add(self, offset: int) -> None:
        self.open.add(offset)
        heapq.heappush(self.heap, offset)
        self.next = max(self.next, offset + 1)

    def finish(self, offset: int) -> None:
        self.open.discard(offset)

    def committable(self) -> int:
        while self.heap and self.heap[0] not in self.open:
            heapq.heappop(self.heap)
        return self.heap[0] if self.heap else self.next


def _sink(action: Action) -> str:
    return SINK_REDIS if isinstance(action, DeleteKeys) else SINK_SEARCH


def _newest(items: Sequence[_Item]) -> Action:
    """The action standing for a key's whole queue: the newest position wins, then the latest."""
    best = items[0].message.action
    for item in list(items)[1:]:
        action = item.message.action
        if best.position is None or (
            action.position is not None and action.position.version >= best.position.version
        ):
            best = action
    return best


class RetryConsumer:
    """Consumes the retry topic in a consumer group (see the module docstring).

    Build with :meth:`from_settings`, then :meth:`run` until a
    :class:`threading.Event` is set. Not thread-safe: one consumer per thread;
    run several processes with the same ``group_id`` to scale out.

    *consumer_options* are passed to kafka-python (``session_timeout_ms``,
    ``max_poll_interval_ms``...); keep ``max_poll_interval_ms`` well above the
    sinks' timeouts, since one batch is applied between two polls.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        topic: str,
        dead_letter_topic: str,
        group_id: str,
        redis: RedisSink | None,
        search: SearchSink | None,
        refresher: Refresher | None = None,
        policy: RetryPolicy = RetryPolicy.DEFAULT,
        max_batch: int = 500,
        max_pending: int = 50_000,
        commit_interval: float = 0.5,
        timeout: float = 5.0,
        consumer_options: Mapping[str, Any] | None = None,
        producer_options: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.dead_letter_topic = dead_letter_topic
        self.group_id = group_id
        self.refresher = refresher
        self.policy = policy
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.commit_interval = commit_interval
        # Faster failover than kafka-python's 45 s default: a dead consumer's partitions
        # move to a live one within ~10 s. Callers may override any kafka-python setting.
        self.consumer_options = {"session_timeout_ms": 10000, "heartbeat_interval_ms": 3000}
        self.consumer_options.update(consumer_options or {})
        self.clock = clock
        self.rng = rng or random.Random()
        self.stats = ConsumerStats()
        self._applier = Applier(redis, search, policy=ImmediateRetryPolicy.NONE)
        self._dead = DeadLetterPublisher(
            bootstrap, dead_letter_topic, timeout=timeout, producer_options=producer_options
        )
        self._identity = {"group": group_id, "host": socket.gethostname(), "pid": os.getpid()}
        self._consumer: Any = None
        self._queues: dict[str, collections.deque[_Item]] = {}
        self._due: list[tuple[float, int, str]] = []
        self._seq = 0
        self._offsets: dict[_Partition, _Offsets] = {}
        self._letters: list[tuple[DeadLetter, list[tuple[_Partition, int]]]] = []
        self._letters_due = 0.0
        self._failing: set[str] = set()
        self._paused = False
        self._last_commit = 0.0

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        registry: Registry | None = None,
        policy: RetryPolicy = RetryPolicy.DEFAULT,
        group_id: str | None = None,
        **options: Any,
    ) -> RetryConsumer:
        """A consumer for *settings*: Redis, Elasticsearch and the re-read database from it."""
        from ..connections import elasticsearch_client, redis_client, sql_engine
        from ..registry import default_registry
        from ..reread import SqlRowReader

        bootstrap = settings.require("kafka_bootstrap", "for the retry consumer")
        database = settings.mysql_url or settings.outbox_url
        return cls(
            bootstrap,
            topic=settings.retry_topic,
            dead_letter_topic=settings.dead_letter_topic,
            group_id=group_id or default_group(settings.name),
            redis=RedisSink(redis_client(settings), cluster=settings.redis_cluster),
            search=SearchSink(elasticsearch_client(settings)) if settings.es_url else None,
            refresher=Refresher(SqlRowReader(sql_engine(database)), registry or default_registry)
            if database
            else None,
            policy=policy,
            **options,
        )

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Connect and subscribe (the group join completes during the first polls)."""
        if self._consumer is not None:
            return
        from kafka import ConsumerRebalanceListener

        owner = self

        class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            def on_partitions_revoked(self, revoked: Any) -> None:
                owner._revoked([(tp.topic, tp.partition) for tp in revoked])

            def on_partitions_assigned(self, assigned: Any) -> None:
                log.info(
                    "cachesync retry consumer: assigned %s",
                    ", ".join(f"{tp.topic}[{tp.partition}]" for tp in assigned) or "nothing",
                )

        self._consumer = make_consumer(
            self.bootstrap,
            client_id="cachesync-retry",
            group_id=self.group_id,
            **self.consumer_options,
        )
        with kafka_errors(f"subscribing to {self.topic}"):
            self._consumer.subscribe([self.topic], listener=Listener())

    def close(self) -> None:
        """Commit what is finished, then leave the group. Waiting records are replayed later."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(CacheSyncError):
                self._flush_letters(force=True)
            self._commit(consumer, force=True)
            with contextlib.suppress(Exception):
                consumer.close(autocommit=False)
        self._dead.close()

    def run(self, stop: threading.Event | None = None) -> None:
        """Consume until *stop* is set (or forever); Kafka outages are waited out."""
        stop = stop or threading.Event()
        self.start()
        try:
            while not stop.is_set():
                try:
                    self.poll_once()
                except TransientError as exc:
                    log.warning("cachesync retry consumer: %s", exc)
                    stop.wait(1.0)
        finally:
            self.close()

    # -- one iteration --------------------------------------------------------------------

    def poll_once(self, max_wait: float = 0.5) -> None:
        """Poll once, apply what is due, dead-letter what must be, commit what is finished."""
        if self._consumer is None:
            self.start()
        consumer = self._consumer
        now = self.clock()
        wait = max_wait
        if self._due:
            wait = max(0.0, min(max_wait, self._due[0][0] - now))
        with kafka_errors("polling the retry topic"):
            batch = consumer.poll(timeout_ms=int(wait * 1000), max_records=self.max_batch)
        for records in batch.values():
            for raw in records:
                self._accept(to_record(raw))
        self._process_due()
        self._flush_letters()
        self._commit(consumer)
        self._flow_control(consumer)
        self.stats.pending = self.pending()

    def pending(self) -> int:
        """Records held in memory (waiting, or waiting for the dead-letter topic)."""
        return sum(len(q) for q in self._queues.values()) + sum(
            len(refs) for _, refs in self._letters
        )

    # -- intake ---------------------------------------------------------------------------

    def _accept(self, record: Record) -> None:
        part = (record.topic, record.partition)
        self._offsets.setdefault(part, _Offsets()).add(record.offset)
        self.stats.received += 1
        ref = RecordRef(record.topic, record.partition, record.offset, record.timestamp)
        try:
            message = decode_message(record.value)
        except DecodeError as exc:
            self.stats.undecodable += 1
            log.error("cachesync retry consumer: undecodable record %s: %s", ref, exc)
            letter = DeadLetter(
                REASON_UNDECODABLE,
                ErrorInfo.of(exc),
                dt.datetime.now(dt.UTC),
                ref,
                None,
                record.key,
                record.value,
                self._identity,
            )
            self._letters.append((letter, [(part, record.offset)]))
            return
        if message.attempt == 0:
            due = self.clock()
        else:
            due = message.last_failed_at.timestamp() + self.policy.backoff(
                message.attempt, self.rng
            )
        item = _Item(part, record.offset, record.timestamp, message, due)
        key = message.key
        queue = self._queues.get(key)
        if queue:
            queue.append(item)  # behind the key's older records: never overtakes them
            return
        self._queues[key] = collections.deque([item])
        self._schedule(key, due)

    def _schedule(self, key: str, due: float) -> None:
        self._seq += 1
        heapq.heappush(self._due, (due, self._seq, key))

    def _pop_due(self, now: float) -> list[str]:
        keys: list[str] = []
        while self._due and len(keys) < self.max_batch:
            due, _, key = self._due[0]
            queue = self._queues.get(key)
            if not queue or queue[0].due != due:
                heapq.heappop(self._due)  # stale entry: the key finished or was rescheduled
                continue
            if due > now:
                break
            heapq.heappop(self._due)
            keys.append(key)
        return keys

    # -- applying -------------------------------------------------------------------------

    def _process_due(self) -> None:
        now = self.clock()
        keys = self._pop_due(now)
        if not keys:
            return
        actions = {key: _newest(self._queues[key]) for key in keys}
        errors: dict[str, CacheSyncError] = {}
        sinks: dict[str, str] = {key: _sink(a) for key, a in actions.items()}
        to_apply: list[Action] = []
        if self.refresher is not None:
            documents = [k for k, a in actions.items() if not isinstance(a, DeleteKeys)]
            try:
                fresh = self.refresher.refresh([actions[k] for k in documents])
            except CacheSyncError as exc:  # the database is unreachable
                fresh = [exc] * len(documents)
            for key, result in zip(documents, fresh, strict=True):
                if isinstance(result, CacheSyncError):
                    errors[key] = result
                    if isinstance(result, TransientError):
                        sinks[key] = SINK_DATABASE
                else:
                    actions[key] = result
        to_apply = [a for k, a in actions.items() if k not in errors]
        attempted = sum(len(self._queues[k]) for k in keys)
        self.stats.attempts += attempted
        metrics.inc("retries_total", attempted)
        try:
            for failure in self._applier.apply(to_apply).failures:
                errors[message_key(failure.action)] = failure.error
        except CacheSyncError as exc:  # a configuration problem (no Redis / ES configured)
            for action in to_apply:
                errors[message_key(action)] = exc

        finished = dt.datetime.now(dt.UTC)
        recovered: set[str] = set()
        failing: set[str] = set()
        for key in keys:
            error = errors.get(key)
            if error is None:
                recovered.add(sinks[key])
                self._succeed(key)
            elif isinstance(error, TransientError):
                failing.add(sinks[key])
                self._fail(key, error, finished, sinks[key])
            else:
                self._dead_letter_key(key, error, REASON_PERMANENT, finished)
        woken = recovered & self._failing
        self._failing = (self._failing - recovered) | failing
        if woken:
            self._wake(woken)

    def _succeed(self, key: str) -> None:
        queue = self._queues.pop(key)
        for item in queue:
            self._offsets[item.partition].finish(item.offset)
        self.stats.applied += len(queue)
        metrics.inc("retry_succeeded_total", len(queue))

    def _fail(self, key: str, error: CacheSyncError, at: dt.datetime, sink: str) -> None:
        queue = self._queues[key]
        exhausted: list[_Item] = []
        kept: collections.deque[_Item] = collections.deque()
        for item in queue:
            item.message = item.message.failed_again(error, at)
            item.sink = sink
            (exhausted if item.message.attempt >= self.policy.attempts else kept).append(item)
        if exhausted:
            self._to_dead_letters(exhausted, REASON_EXHAUSTED, ErrorInfo.of(error), at)
        if not kept:
            del self._queues[key]
            return
        self._queues[key] = kept
        head = kept[0]
        head.due = self.clock() + self.policy.backoff(head.message.attempt, self.rng)
        self._schedule(key, head.due)

    def _dead_letter_key(
        self, key: str, error: CacheSyncError, reason: str, at: dt.datetime
    ) -> None:
        queue = self._queues.pop(key)
        for item in queue:
            item.message = item.message.failed_again(error, at)
        log.error("cachesync retry consumer: %s failed permanently: %s", key, error)
        self._to_dead_letters(list(queue), reason, ErrorInfo.of(error), at)

    def _to_dead_letters(
        self, items: Sequence[_Item], reason: str, error: ErrorInfo, at: dt.datetime
    ) -> None:
        for item in items:
            ref = RecordRef(item.partition[0], item.partition[1], item.offset, item.timestamp)
            letter = DeadLetter(reason, error, at, ref, item.message, consumer=self._identity)
            self._letters.append((letter, [(item.partition, item.offset)]))

    def _wake(self, sinks: set[str]) -> None:
        """A sink answers again: everything waiting on it is due now."""
        now = self.clock()
        woken = 0
        for key, queue in self._queues.items():
            head = queue[0]
            if head.sink in sinks and head.due > now:
                head.due = now
                self._schedule(key, now)
                woken += 1
        if woken:
            log.info(
                "cachesync retry consumer: %s answering again; %d waiting key(s) retried now",
                "/".join(sorted(sinks)),
                woken,
            )

    # -- dead letters, offsets, flow ------------------------------------------------------

    def _flush_letters(self, force: bool = False) -> None:
        if not self._letters or (not force and self.clock() < self._letters_due):
            return
        letters = [letter for letter, _ in self._letters]
        try:
            self._dead.publish(letters)
        except CacheSyncError as exc:
            self._letters_due = self.clock() + 2.0
            log.warning(
                "cachesync retry consumer: %d dead letter(s) not yet published (%s); "
                "their offsets stay uncommitted",
                len(letters),
                exc,
            )
            raise TransientError(str(exc)) from exc
        for letter, refs in self._letters:
            for part, offset in refs:
                if part in self._offsets:
                    self._offsets[part].finish(offset)
            log.warning(
                "cachesync retry consumer: dead-lettered %s (%s): %s",
                letter.key,
                letter.reason,
                letter.error,
            )
        self.stats.dead_lettered += len(letters)
        self._letters = []

    def _commit(self, consumer: Any, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last_commit < self.commit_interval:
            return
        self._last_commit = now
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        offsets = {}
        for (topic, partition), tracker in self._offsets.items():
            target = tracker.committable()
            if target > tracker.committed:
                offsets[TopicPartition(topic, partition)] = OffsetAndMetadata(target, "", -1)
        if not offsets:
            return
        try:
            with kafka_errors("committing offsets"):
                consumer.commit(offsets=offsets)
        except CacheSyncError as exc:
            log.warning("cachesync retry consumer: commit failed (%s); will retry", exc)
            return
        for tp, meta in offsets.items():
            done = self._offsets.get((tp.topic, tp.partition))
            if done is not None:
                done.committed = meta.offset
        self.stats.commits += 1

    def _revoked(self, partitions: Sequence[_Partition]) -> None:
        """Partitions leave this consumer: commit what is finished, forget what waits."""
        if self._consumer is not None:
            with contextlib.suppress(CacheSyncError):
                self._flush_letters(force=True)
            self._commit(self._consumer, force=True)
        gone = set(partitions)
        for key in [k for k, q in self._queues.items() if q[0].partition in gone]:
            del self._queues[key]
        self._letters = [(letter, refs) for letter, refs in self._letters if refs[0][0] not in gone]
        for part in gone:
            self._offsets.pop(part, None)

    def _flow_control(self, consumer: Any) -> None:
        pending = self.pending()
        with kafka_errors("pausing/resuming partitions"):
            if pending >= self.max_pending:
                consumer.pause(*consumer.assignment())  # again after a rebalance
                if not self._paused:
                    log.warning(
                        "cachesync retry consumer: %d records waiting; pausing intake", pending
                    )
                self._paused = True
            elif self._paused and pending < self.max_pending // 2:
                consumer.resume(*consumer.paused())
                self._paused = False
