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

The scheduling itself (queues, due times, coalescing, the offset watermark,
flow thresholds) is the pure :class:`~cachesync.kafka.scheduler.Scheduler`;
this module is its Kafka group glue: polling, the rebalance listener, commits,
applying turns, and publishing dead letters.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import metrics
from ..actions import Action, DeleteKeys
from ..apply import Applier, Failure
from ..errors import CacheSyncError, PermanentError, TransientError
from ..policies import Backoff, ImmediateRetryPolicy, RetryPolicy
from ..reread import Refresher
from ..sinks.base import DocumentSink, KeySink
from ..sinks.elasticsearch import SearchSink
from ..sinks.redis import RedisSink
from .client import kafka_errors, make_consumer, to_record
from .codec import message_key
from .dead_letter import DeadLetterPublisher
from .scheduler import SINK_DATABASE, Flow, Outcome, Partition, Scheduler, Turn, sink_of

if TYPE_CHECKING:
    from ..config import Settings
    from ..registry import Registry

__all__ = ["ConsumerStats", "RetryConsumer", "default_group"]

log = logging.getLogger("cachesync.kafka")

# Constant waits, as before the policies existed; a Backoff so the schedule has one form.
#: After a Kafka error in :meth:`RetryConsumer.run`, before polling again.
OUTAGE_WAIT = Backoff(1.0, 1.0, jitter=0.0)
#: After the dead-letter topic failed to acknowledge, before publishing again.
DEAD_LETTER_WAIT = Backoff(2.0, 2.0, jitter=0.0)


def _as_error(exc: Exception, what: str) -> CacheSyncError:
    """*exc* as the error of one action: a cachesync error as is, anything else permanent.

    Anything else is a bug or an input nothing validated; retrying the same
    input will not help, so it is dead-lettered (with its type and text) after
    the traceback is logged once.
    """
    if isinstance(exc, CacheSyncError):
        return exc
    log.error("cachesync retry consumer: %s raised unexpectedly", what, exc_info=exc)
    return PermanentError(f"{what} raised {type(exc).__name__}: {exc}")


def default_group(pipeline: str) -> str:
    """The consumer group of a pipeline's retry consumers."""
    return f"cachesync-retry.{pipeline}"


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


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Silence *logger_name* below CRITICAL for the block (a library's shutdown noise)."""
    target = logging.getLogger(logger_name)
    level = target.level
    target.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        target.setLevel(level)


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
        redis: KeySink | None,
        search: DocumentSink | None,
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
        self._scheduler = Scheduler(
            policy,
            max_batch=max_batch,
            max_pending=max_pending,
            clock=clock,
            rng=self.rng,
            identity=self._identity,
        )
        self._consumer: Any = None
        self._letters_due = 0.0
        self._letter_failures = 0
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
            topic=settings.resolved_retry_topic,
            dead_letter_topic=settings.resolved_dead_letter_topic,
            group_id=group_id or default_group(settings.name),
            redis=RedisSink(redis_client(settings), cluster=settings.redis_cluster)
            if settings.redis_url
            else None,
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
            # kafka-python's I/O thread logs the task that close() cancels as an
            # ERROR with a traceback: a normal shutdown is not an error to report.
            with _quiet("kafka"), contextlib.suppress(Exception):
                consumer.close(autocommit=False)
        with _quiet("kafka"):
            self._dead.close()

    def run(self, stop: threading.Event | None = None) -> None:
        """Consume until *stop* is set (or forever); Kafka outages are waited out.

        Blocks; returns only once *stop* is set, after :meth:`close`. Raises what
        is not a :class:`TransientError` (a configuration problem).
        """
        stop = stop or threading.Event()
        self.start()
        outages = 0
        try:
            while not stop.is_set():
                try:
                    self.poll_once()
                    outages = 0
                except TransientError as exc:
                    outages += 1
                    log.warning("cachesync retry consumer: %s", exc)
                    stop.wait(OUTAGE_WAIT.delay(outages))
        finally:
            self.close()

    # -- one iteration --------------------------------------------------------------------

    def poll_once(self, max_wait: float = 0.5) -> None:
        """Poll once, apply what is due, dead-letter what must be, commit what is finished.

        Blocks up to *max_wait* in the poll (less when a key is due sooner), then
        for the sinks' and the dead-letter topic's bounded waits. Raises
        :class:`TransientError` when Kafka cannot be polled or dead letters cannot
        be published (their offsets stay uncommitted; they are retried later).
        """
        if self._consumer is None:
            self.start()
        consumer = self._consumer
        wait = max_wait
        due = self._scheduler.next_due()
        if due is not None:
            wait = max(0.0, min(max_wait, due - self.clock()))
        with kafka_errors("polling the retry topic"):
            batch = consumer.poll(timeout_ms=int(wait * 1000), max_records=self.max_batch)
        for records in batch.values():
            for raw in records:
                self.stats.received += 1
                if self._scheduler.receive(to_record(raw)) is not None:
                    self.stats.undecodable += 1
        self._process_due()
        self._flush_letters()
        self._commit(consumer)
        self._flow_control(consumer)
        self.stats.pending = self.pending()

    def pending(self) -> int:
        """Records held in memory (waiting, or waiting for the dead-letter topic)."""
        return self._scheduler.pending()

    # -- applying -------------------------------------------------------------------------

    def _process_due(self) -> None:
        turns = self._scheduler.take_due()
        if not turns:
            return
        outcomes = self._apply(turns)
        attempted = sum(t.records for t in turns)
        self.stats.attempts += attempted
        metrics.inc("retries_total", attempted)
        applied = self._scheduler.complete(outcomes)
        self.stats.applied += applied
        metrics.inc("retry_succeeded_total", applied)

    def _apply(self, turns: Sequence[Turn]) -> list[Outcome]:
        """Refresh documents from the database, apply everything, and say how each key went.

        Each key gets its own verdict: an error that only one action can cause
        (anything but a database outage) is never charged to the others of the batch.
        """
        actions: dict[str, Action] = {t.key: t.action for t in turns}
        errors: dict[str, CacheSyncError] = {}
        sinks: dict[str, str] = {key: sink_of(a) for key, a in actions.items()}
        if self.refresher is not None:
            documents = [k for k, a in actions.items() if not isinstance(a, DeleteKeys)]
            fresh = self._refresh(self.refresher, [actions[k] for k in documents])
            for key, result in zip(documents, fresh, strict=True):
                if isinstance(result, CacheSyncError):
                    errors[key] = result
                    if isinstance(result, TransientError):
                        sinks[key] = SINK_DATABASE
                else:
                    actions[key] = result
        to_apply = [a for k, a in actions.items() if k not in errors]
        for failure in self._apply_isolated(to_apply):
            errors[message_key(failure.action)] = failure.error
        return [Outcome(t.key, sinks[t.key], errors.get(t.key)) for t in turns]

    def _refresh(
        self, refresher: Refresher, actions: Sequence[Action]
    ) -> list[Action | CacheSyncError]:
        """:meth:`Refresher.refresh`, one action at a time when the batch call raises.

        A :class:`TransientError` for the whole call is the database being
        unreachable: every document waits on it. Anything else the call raises
        is retried action by action, so it lands on the action that causes it.
        """
        try:
            return refresher.refresh(actions)
        except TransientError as exc:
            return [exc] * len(actions)
        except Exception as exc:
            if len(actions) <= 1:
                return [_as_error(exc, "re-reading the row")] * len(actions)
            return [result for a in actions for result in self._refresh(refresher, [a])]

    def _apply_isolated(self, actions: Sequence[Action]) -> list[Failure]:
        """:meth:`Applier.apply`'s failures; one action at a time when the batch call raises.

        ``apply`` reports per-action failures and raises only for what it cannot
        pin on one action (a missing sink), but an unexpected exception (say,
        from one malformed action inside a sink) must not be charged to the
        whole batch: the batch is re-applied one action at a time (deletes and
        versioned writes are idempotent) and the exception stays with its action.
        """
        if not actions:
            return []
        try:
            return self._applier.apply(actions).failures
        except Exception as exc:
            if len(actions) == 1:
                return [Failure(actions[0], _as_error(exc, "applying"))]
            if not isinstance(exc, CacheSyncError):
                log.warning(
                    "cachesync retry consumer: a batch of %d raised %s; applying one by one",
                    len(actions),
                    type(exc).__name__,
                )
            return [f for a in actions for f in self._apply_isolated([a])]

    # -- dead letters, offsets, flow ------------------------------------------------------

    def _flush_letters(self, force: bool = False) -> None:
        letters = self._scheduler.letters()
        if not letters or (not force and self.clock() < self._letters_due):
            return
        try:
            self._dead.publish(letters)
        except CacheSyncError as exc:
            self._letter_failures += 1
            self._letters_due = self.clock() + DEAD_LETTER_WAIT.delay(self._letter_failures)
            log.warning(
                "cachesync retry consumer: %d dead letter(s) not yet published (%s); "
                "their offsets stay uncommitted",
                len(letters),
                exc,
            )
            raise TransientError(str(exc)) from exc
        self._letter_failures = 0
        for letter in self._scheduler.letters_published(len(letters)):
            log.warning(
                "cachesync retry consumer: dead-lettered %s (%s): %s",
                letter.key,
                letter.reason,
                letter.error,
            )
        self.stats.dead_lettered += len(letters)

    def _commit(self, consumer: Any, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last_commit < self.commit_interval:
            return
        self._last_commit = now
        targets = self._scheduler.committable()
        if not targets:
            return
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        offsets = {
            TopicPartition(topic, partition): OffsetAndMetadata(target, "", -1)
            for (topic, partition), target in targets.items()
        }
        try:
            with kafka_errors("committing offsets"):
                consumer.commit(offsets=offsets)
        except CacheSyncError as exc:
            log.warning("cachesync retry consumer: commit failed (%s); will retry", exc)
            return
        self._scheduler.committed(targets)
        self.stats.commits += 1

    def _revoked(self, partitions: Sequence[Partition]) -> None:
        """Partitions leave this consumer: commit what is finished, forget what waits."""
        if self._consumer is not None:
            with contextlib.suppress(CacheSyncError):
                self._flush_letters(force=True)
            self._commit(self._consumer, force=True)
        self._scheduler.revoke(partitions)

    def _flow_control(self, consumer: Any) -> None:
        flow = self._scheduler.flow(self._paused)
        with kafka_errors("pausing/resuming partitions"):
            if flow is Flow.PAUSE:
                consumer.pause(*consumer.assignment())  # again after a rebalance
                if not self._paused:
                    log.warning(
                        "cachesync retry consumer: %d records waiting; pausing intake",
                        self.pending(),
                    )
                self._paused = True
            elif flow is Flow.RESUME:
                consumer.resume(*consumer.paused())
                self._paused = False
