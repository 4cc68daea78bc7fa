""":class:`RetryQueue`: the failure handler that parks failed actions on a Kafka retry topic.

Contract (:class:`~cachesync.apply.FailureHandler`): ``handle()`` returns only
once every failure is durably stored, else raises
:class:`~cachesync.errors.HandOffError` and the caller keeps its checkpoint.

1. Each failure becomes one :class:`~cachesync.kafka.codec.RetryMessage` per
   cache key (or per document), keyed so that one key's actions share a
   partition and stay in order. Records are sent with ``acks=all`` through an
   idempotent producer (where the broker supports it) and ``handle()`` waits
   for every acknowledgement, at most ``timeout`` seconds.
2. If Kafka does not acknowledge in time, the failures go to the outbox table
   (``kind='failed'``) in their own committed transaction; the
   :class:`~cachesync.outbox.OutboxRelay` applies or publishes them later.
   Records that did reach Kafka in the meantime are applied twice: harmless,
   every action is idempotent.
3. If the outbox cannot take them either: :class:`HandOffError` (backpressure).

After a Kafka failure the circuit opens: hand-offs go straight to the outbox
(or raise :class:`HandOffError` when there is none) without waiting on Kafka,
so a broker outage costs the sidecar one ``timeout``, not one per batch. A
background probe checks the broker's metadata and closes the circuit when it
answers; between checks it waits :attr:`RetryQueuePolicy.cooldown
<cachesync.policies.RetryQueuePolicy.cooldown>` (1 s doubling to 30 s by default).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .. import metrics
from ..actions import per_key
from ..apply import Failure, FailureHandler
from ..errors import CacheSyncError, ConfigurationError, HandOffError, TransientError
from ..keys import wire_key
from ..outbox.schema import KIND_FAILED, STATE_DEAD, STATE_PENDING
from ..policies import RetryQueuePolicy
from .client import AckedProducer, Outgoing
from .codec import ErrorInfo, RetryMessage, encode_message, from_epoch, origin

if TYPE_CHECKING:
    from ..config import Settings
    from ..outbox.store import OutboxStore

__all__ = ["RetryQueue", "to_messages"]

log = logging.getLogger("cachesync.kafka")


def to_messages(
    failures: Sequence[Failure], source: Mapping[str, Any], now: dt.datetime
) -> list[RetryMessage]:
    """Retry messages for *failures*, one per key (:func:`~cachesync.actions.per_key`)."""
    return [
        RetryMessage(
            action,
            max(1, failure.attempts),
            from_epoch(failure.first_failed_at),
            now,
            ErrorInfo.of(failure.error),
            dict(source),
        )
        for failure in failures
        for action in per_key(failure.action)
    ]


class RetryQueue(FailureHandler):
    """Publishes failed actions to the retry topic, with the outbox as fallback (module doc).

    Thread-safe: the sidecar and the after-commit fast path may share one queue.
    The producer is created lazily, so constructing a queue never blocks on Kafka.
    """

    def __init__(
        self,
        bootstrap: str | None,
        topic: str,
        *,
        outbox: OutboxStore | None = None,
        policy: RetryQueuePolicy = RetryQueuePolicy.DEFAULT,
        timeout: float | None = None,
        component: str = "sidecar",
        pipeline: str = "default",
        producer_options: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """*timeout*, when given, replaces ``policy.timeout`` (and is validated like it).

        Raises :class:`~cachesync.errors.ConfigurationError` without a bootstrap and
        an outbox, or for an invalid policy. Never touches the network.
        """
        if bootstrap is None and outbox is None:
            raise ConfigurationError(
                "RetryQueue needs a Kafka bootstrap, an outbox, or both", setting="kafka_bootstrap"
            )
        if timeout is not None:
            policy = replace(policy, timeout=timeout)
        self.bootstrap = bootstrap
        self.topic = topic
        self.outbox = outbox
        self.policy = policy
        self.origin = origin(component, pipeline)
        self.producer_options = dict(producer_options or {})
        self.clock = clock
        self._lock = threading.Lock()
        self._kafka = self._new_producer()
        self._open = False
        self._next_probe = 0.0
        self._failed_checks = 0  # consecutive: the cooldown grows with them
        self._probe: threading.Thread | None = None

    @property
    def timeout(self) -> float:
        """The bound of one hand-off to Kafka (``policy.timeout``)."""
        return self.policy.timeout

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        component: str = "sidecar",
        outbox: bool = True,
        timeout: float | None = None,
        policy: RetryQueuePolicy = RetryQueuePolicy.DEFAULT,
    ) -> RetryQueue:
        """The queue for *settings*: ``kafka_bootstrap``/``retry_topic``, outbox at ``outbox_url``
        (else ``mysql_url``). Without Kafka the outbox alone is the hand-off.

        *timeout*, when given, replaces ``policy.timeout``; it bounds the Kafka
        hand-off and the outbox's database connection.

        The sidecar's own ``mysql_url`` user needs only ``SELECT`` and replication
        grants; for the outbox fallback either grant it ``INSERT`` on the outbox
        table or point ``outbox_url`` at a user that has it. Without either, a
        hand-off while Kafka is down raises :class:`HandOffError` and the sidecar
        holds its checkpoint until Kafka is back (backpressure, nothing lost).
        """
        from ..outbox.store import OutboxStore

        if timeout is not None:
            policy = replace(policy, timeout=timeout)
        database = settings.outbox_database if outbox else None
        return cls(
            settings.kafka_bootstrap,
            settings.resolved_retry_topic,
            outbox=OutboxStore.from_url(database, timeout=policy.timeout) if database else None,
            policy=policy,
            component=component,
            pipeline=settings.name,
        )

    # -- Kafka ----------------------------------------------------------------------------

    def _new_producer(self) -> AckedProducer | None:
        if self.bootstrap is None:
            return None
        return AckedProducer(
            self.bootstrap,
            timeout=self.policy.timeout,
            client_id=f"cachesync-{self.origin['component']}",
            options=self.producer_options,
            clock=self.clock,
        )

    def kafka_available(self) -> bool:
        """False while the circuit is open (after a Kafka failure, until a probe succeeds)."""
        return self.bootstrap is not None and not self._open

    def publish(self, messages: Sequence[RetryMessage]) -> None:
        """Send *messages* and wait for every ``acks=all`` acknowledgement (``timeout`` bounded).

        Raises :class:`TransientError` (or another :class:`CacheSyncError`) on failure;
        some of the messages may have reached Kafka all the same.
        """
        if not messages:
            return
        deadline = self.clock() + self.policy.timeout
        with self._lock:
            kafka = self._kafka
        if kafka is None:
            raise ConfigurationError("RetryQueue has no Kafka bootstrap", setting="kafka_bootstrap")
        kafka.send(
            # wire_key: a key from a non-UTF-8 value has lone surrogates; encode() raises
            [Outgoing(self.topic, wire_key(m.key), encode_message(m)) for m in messages],
            what=f"publishing {len(messages)} retry message(s) to {self.topic}",
            deadline=deadline,
        )

    def _cooldown(self) -> float:
        return self.policy.cooldown.delay(self._failed_checks)

    def _kafka_failed(self, exc: CacheSyncError) -> None:
        with self._lock:
            self._open = True
            self._failed_checks = 1
            self._next_probe = self.clock() + self._cooldown()
            kafka = self._kafka
        if kafka is not None:  # already dropped by the failed send; cheap either way
            kafka.close(timeout=0.0)
        log.warning(
            "cachesync retry queue: Kafka unavailable (%s); failures go to %s until it answers",
            exc,
            "the outbox" if self.outbox is not None else "the caller (backpressure)",
        )

    def _maybe_probe(self) -> None:
        """While the circuit is open, check Kafka in the background, never in ``handle()``."""
        with self._lock:
            if self._probe is not None or self.clock() < self._next_probe:
                return
            self._probe = threading.Thread(
                target=self._run_probe, name="cachesync-kafka-probe", daemon=True
            )
            self._probe.start()

    def _run_probe(self) -> None:
        probe = self._new_producer()
        assert probe is not None  # probes start only with a bootstrap
        try:
            probe.check(self.topic)
        except CacheSyncError as exc:
            probe.close(timeout=0.0)
            with self._lock:
                self._failed_checks += 1
                self._next_probe = self.clock() + self._cooldown()
                self._probe = None
            log.debug("cachesync retry queue: Kafka probe failed: %s", exc)
            return
        with self._lock:
            old, self._kafka = self._kafka, probe  # keep its connection: it just answered
            self._open = False
            self._failed_checks = 0
            self._probe = None
        if old is not None:
            old.close(timeout=0.0)
        log.info("cachesync retry queue: Kafka answers again; failures go to %s", self.topic)

    # -- FailureHandler -------------------------------------------------------------------

    def handle(self, failures: Sequence[Failure]) -> None:
        """Store *failures* durably: Kafka, else the outbox, else raise :class:`HandOffError`."""
        if not failures:
            return
        now = dt.datetime.now(dt.UTC)
        kafka_error: CacheSyncError | None = None
        if self.kafka_available():
            messages = to_messages(failures, self.origin, now)
            try:
                self.publish(messages)
                return
            except CacheSyncError as exc:
                kafka_error = exc
                self._kafka_failed(exc)
        elif self.bootstrap is not None:
            kafka_error = TransientError("Kafka unavailable (circuit open after a failure)")
            self._maybe_probe()
        if self.outbox is None:
            raise HandOffError(
                f"{len(failures)} failed action(s) could not be stored: {kafka_error} "
                "and no outbox is configured"
            )
        self._park(failures, kafka_error)

    def _park(self, failures: Sequence[Failure], kafka_error: CacheSyncError | None) -> None:
        """Failures into the outbox: transient ones pending (the relay retries them), permanent
        ones straight to ``dead`` (the database dead-letter store: retrying cannot help)."""
        assert self.outbox is not None
        for transient in (True, False):
            group = [f for f in failures if f.transient is transient]
            if not group:
                continue
            actions = [a for f in group for a in per_key(f.action)]
            summary = "; ".join(dict.fromkeys(str(ErrorInfo.of(f.error)) for f in group))
            try:
                self.outbox.add(
                    KIND_FAILED,
                    actions,
                    attempts=max(f.attempts for f in group),
                    last_error=summary,
                    state=STATE_PENDING if transient else STATE_DEAD,
                )
            except CacheSyncError as exc:
                raise HandOffError(
                    f"{len(actions)} failed action(s) could be stored neither in Kafka "
                    f"({kafka_error or 'not configured'}) nor in the outbox ({exc})"
                ) from exc
            if transient:
                metrics.inc("outbox_pending_total", len(actions))
                log.info("cachesync retry queue: %d action(s) parked in the outbox", len(actions))
            else:
                metrics.inc("dead_letters_total", len(actions))
                log.error(
                    "cachesync retry queue: %d action(s) failed permanently, e.g. %s; dead "
                    "letters in the outbox table (cachesync dlq list)",
                    len(actions),
                    ErrorInfo.of(group[0].error),
                )

    def close(self) -> None:
        """Flush and close the producer (bounded by ``timeout``)."""
        with self._lock:
            kafka = self._kafka
        if kafka is not None:
            kafka.close()
