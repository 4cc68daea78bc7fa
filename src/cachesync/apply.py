"""The :class:`Applier`: apply a batch of actions, retry briefly, hand off the rest.

``apply()`` returns only when every action is applied or accepted by the
:class:`FailureHandler`. If the handler cannot take them either, it raises
:class:`~cachesync.errors.HandOffError` and the caller must not advance its
checkpoint: nothing is ever dropped on the floor.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from . import metrics
from .actions import Action, DeleteKeys, DocumentAction
from .errors import CacheSyncError, ConfigurationError, HandOffError, TransientError
from .policies import ImmediateRetryPolicy
from .sinks.elasticsearch import DocumentFailure, SearchSink, latest_per_document
from .sinks.redis import RedisSink

__all__ = ["Applier", "ApplyReport", "Failure", "FailureHandler", "LoggingFailureHandler"]

log = logging.getLogger("cachesync.apply")


@dataclass(frozen=True)
class Failure:
    """An action that could not be applied, with the last error and when it first failed."""

    action: Action
    error: CacheSyncError
    first_failed_at: float = field(default_factory=time.time)
    attempts: int = 1

    @property
    def transient(self) -> bool:
        return isinstance(self.error, TransientError)


class FailureHandler(ABC):
    """Takes over actions the applier could not apply.

    Contract: ``handle`` returns only when every failure is durably stored (a
    Kafka retry topic acknowledged with ``acks=all``, an outbox row committed...).
    If it cannot, it raises :class:`HandOffError`; it never drops silently. It may
    block (a broker round trip) but should bound its own wait.
    """

    @abstractmethod
    def handle(self, failures: Sequence[Failure]) -> None: ...


class LoggingFailureHandler(FailureHandler):
    """Logs and refuses: for setups without a retry queue, failures stop the checkpoint."""

    def handle(self, failures: Sequence[Failure]) -> None:
        for f in failures:
            log.error("cachesync: could not apply %r: %s", f.action, f.error)
        raise HandOffError(
            f"{len(failures)} action(s) failed and no retry queue is configured "
            "(set kafka_bootstrap / CACHESYNC_KAFKA_BOOTSTRAP)"
        )


@dataclass
class ApplyReport:
    keys_deleted: int = 0
    documents: int = 0
    handed_off: int = 0
    failures: list[Failure] = field(default_factory=list)


class Applier:
    """Applies batches to Redis and Elasticsearch. Thread-compatible, not thread-safe."""

    def __init__(
        self,
        redis: RedisSink | None,
        search: SearchSink | None,
        on_failure: FailureHandler,
        *,
        policy: ImmediateRetryPolicy = ImmediateRetryPolicy.DEFAULT,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.redis = redis
        self.search = search
        self.on_failure = on_failure
        self.policy = policy
        self.sleep = sleep

    def _retrying(self) -> Retrying:
        def count(_state: object) -> None:
            metrics.inc("apply_retries_total")

        return Retrying(
            stop=stop_after_attempt(self.policy.attempts),
            wait=wait_exponential_jitter(
                multiplier=self.policy.min_wait,
                max=self.policy.max_wait,
                jitter=self.policy.min_wait,
            ),
            retry=retry_if_exception_type(TransientError),
            sleep=self.sleep,
            before_sleep=count,
            reraise=True,
        )

    def _delete_keys(self, actions: Sequence[DeleteKeys], report: ApplyReport) -> None:
        positions: dict[str, DeleteKeys] = {}
        for action in actions:
            for key in action.keys:
                positions[key] = action
        if not positions:
            return
        if self.redis is None:
            raise ConfigurationError(
                "cache keys are declared but no Redis is configured", setting="redis_url"
            )
        keys = list(positions)
        try:
            for attempt in self._retrying():
                with attempt:
                    self.redis.delete(keys)
            report.keys_deleted += len(keys)
            metrics.inc("keys_deleted_total", len(keys))
        except TransientError as exc:
            # One failure per key: the retry topic is keyed by cache key.
            report.failures += [Failure(DeleteKeys((k,), positions[k].position), exc) for k in keys]

    def _write_documents(self, actions: Sequence[DocumentAction], report: ApplyReport) -> None:
        if not actions:
            return
        if self.search is None:
            raise ConfigurationError(
                "search projections are declared but no Elasticsearch is configured",
                setting="es_url",
            )
        pending = latest_per_document(actions)
        total, failures = len(pending), []
        for attempt_no in range(1, self.policy.attempts + 1):
            try:
                failed = self.search.apply(pending)
            except TransientError as exc:
                failed = [DocumentFailure(a, exc) for a in pending]
            retryable = [f for f in failed if isinstance(f.error, TransientError)]
            failures += [f for f in failed if not isinstance(f.error, TransientError)]
            if not retryable or attempt_no == self.policy.attempts:
                failures += retryable
                break
            metrics.inc("apply_retries_total")
            self.sleep(min(self.policy.max_wait, self.policy.min_wait * 2 ** (attempt_no - 1)))
            pending = [f.action for f in retryable]
        report.failures += [Failure(f.action, f.error) for f in failures]
        report.documents += total - len(failures)
        metrics.inc("documents_written_total", total - len(failures))

    def apply(self, actions: Sequence[Action]) -> ApplyReport:
        """Apply *actions*; hand failures off. Raises :class:`HandOffError` if hand-off fails."""
        report = ApplyReport()
        self._delete_keys([a for a in actions if isinstance(a, DeleteKeys)], report)
        self._write_documents([a for a in actions if not isinstance(a, DeleteKeys)], report)
        if report.failures:
            self.on_failure.handle(report.failures)
            report.handed_off = len(report.failures)
            metrics.inc("handed_off_total", report.handed_off)
        return report
