"""The :class:`Applier`: apply a batch of actions with a short in-line retry, and report.

``apply()`` never hands anything off: it returns an :class:`ApplyReport` whose
``failures`` are what is still unapplied, split one per cache key or document
(the retry path is keyed that way). What happens to them is the caller's
decision: the sidecar and the fast path pass them to a :class:`FailureHandler`
(:func:`hand_off`); the retry consumer and the outbox relay schedule them again.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt

from . import metrics
from .actions import Action, DeleteKeys, DocumentAction, latest_per_document, per_key
from .changes import Position
from .errors import CacheSyncError, ConfigurationError, HandOffError, PermanentError, TransientError
from .policies import ImmediateRetryPolicy
from .sinks.base import DocumentFailure, DocumentSink, KeySink
from .throttle import Throttle

__all__ = [
    "Applier",
    "ApplyReport",
    "Failure",
    "FailureHandler",
    "LoggingFailureHandler",
    "ReportingFailureHandler",
    "describe_action",
    "hand_off",
]

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
    block (a broker round trip) but should bound its own wait. Each failure's
    action carries one cache key or one document (:func:`cachesync.actions.per_key`).

    ``durable`` is False for a handler that can never take work (it only logs
    and refuses): callers then do not offer it work the sink might still apply.
    """

    @property
    def durable(self) -> bool:
        return True

    @abstractmethod
    def handle(self, failures: Sequence[Failure]) -> None: ...


class LoggingFailureHandler(FailureHandler):
    """Logs and refuses: for setups without a retry queue, failures stop the checkpoint."""

    @property
    def durable(self) -> bool:
        return False

    def handle(self, failures: Sequence[Failure]) -> None:
        for f in failures:
            log.error("cachesync: could not apply %r: %s", f.action, f.error)
        raise HandOffError(
            f"{len(failures)} action(s) failed and no retry queue is configured "
            "(set kafka_bootstrap / CACHESYNC_KAFKA_BOOTSTRAP)"
        )


def describe_action(action: Action) -> str:
    """``key user:1`` / ``document users/1``: what an action touches, without its content
    (a document may hold anything; a log line names it, never copies it)."""
    if isinstance(action, DeleteKeys):
        more = f" (+{len(action.keys) - 1})" if len(action.keys) > 1 else ""
        return f"key {action.keys[0] if action.keys else '-'}{more}"
    verb = "document" if type(action).__name__ == "IndexDoc" else "deleted document"
    return f"{verb} {action.index}/{action.doc_id}"


class ReportingFailureHandler(FailureHandler):
    """Hands failures to *inner*, then says so at WARNING, at most once per *interval* seconds.

    A hand-off loses nothing, but it is news an operator must not miss: Redis
    or Elasticsearch refused work (down, or a document the mapping rejects),
    and the cache is only as fresh as the retry consumer. Each line counts the
    actions handed off since the previous one and names the first failure of
    the current batch with its error. A refusal of *inner* (:class:`HandOffError`)
    passes through unlogged: whoever called ``handle`` reports that.
    """

    def __init__(
        self,
        inner: FailureHandler,
        *,
        component: str,
        target: str,
        interval: float = 30.0,
        throttle: Throttle | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.inner = inner
        self.component = component
        self.target = target
        self.throttle = throttle or Throttle(interval)
        self.log = logger or log

    @property
    def durable(self) -> bool:
        return self.inner.durable

    def handle(self, failures: Sequence[Failure]) -> None:
        self.inner.handle(failures)
        count = self.throttle.passes(len(failures))
        if count is None or not failures:
            return
        permanent = sum(1 for f in failures if not f.transient)
        first = failures[0]
        self.log.warning(
            "cachesync %s: handed %d action(s) to %s since the last report%s; e.g. %s: %s",
            self.component,
            count,
            self.target,
            f" ({permanent} of this batch refused for good)" if permanent else "",
            describe_action(first.action),
            first.error,
        )


@dataclass
class ApplyReport:
    """What one :meth:`Applier.apply` did; ``failures`` are what it could not do."""

    keys_deleted: int = 0
    documents: int = 0
    failures: list[Failure] = field(default_factory=list)


def hand_off(report: ApplyReport, handler: FailureHandler) -> int:
    """Give *report*'s failures to *handler*; how many. Raises :class:`HandOffError` as it does."""
    if not report.failures:
        return 0
    handler.handle(report.failures)
    metrics.inc("handed_off_total", len(report.failures))
    return len(report.failures)


def _count_actions(report: ApplyReport) -> None:
    """``actions_total{sink,result}``: per key on Redis, per document on Elasticsearch."""
    if not report.failures:  # the common case, the fast path's every commit: applied only
        if report.keys_deleted:
            metrics.inc("actions_total", report.keys_deleted, sink="redis", result="applied")
        if report.documents:
            metrics.inc("actions_total", report.documents, sink="elasticsearch", result="applied")
        return
    failed_keys = sum(
        len(f.action.keys) for f in report.failures if isinstance(f.action, DeleteKeys)
    )
    failed_documents = sum(1 for f in report.failures if not isinstance(f.action, DeleteKeys))
    for sink, applied, failed in (
        ("redis", report.keys_deleted, failed_keys),
        ("elasticsearch", report.documents, failed_documents),
    ):
        if applied:
            metrics.inc("actions_total", applied, sink=sink, result="applied")
        if failed:
            metrics.inc("actions_total", failed, sink=sink, result="failed")


def _sink_error(exc: Exception, sink: str) -> CacheSyncError:
    """What a sink's exception means for its actions.

    A sink keeps its contract by raising :class:`TransientError` alone; anything
    else is a sink bug or input it cannot take (a key Redis cannot encode...).
    Retrying would fail the same way, so the actions become permanent failures,
    dead-lettered with the error, and the stream goes on. A configuration error
    still propagates: it stops the pipeline, as it should.
    """
    if isinstance(exc, TransientError):
        return exc
    if isinstance(exc, ConfigurationError):
        raise exc
    if not isinstance(exc, CacheSyncError):
        log.exception(
            "cachesync: the %s raised %s; its actions are dead-lettered", sink, type(exc).__name__
        )
    return PermanentError(f"{sink}: {type(exc).__name__}: {exc}")


class Applier:
    """Applies batches to a :class:`KeySink` and a :class:`DocumentSink`.

    Thread-compatible, not thread-safe. Either sink may be ``None`` when no
    declaration needs it; an action for a missing sink is a
    :class:`ConfigurationError`.
    """

    def __init__(
        self,
        keys: KeySink | None,
        documents: DocumentSink | None,
        *,
        policy: ImmediateRetryPolicy = ImmediateRetryPolicy.DEFAULT,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.keys = keys
        self.documents = documents
        self.policy = policy
        self.sleep = sleep

    def _retrying(self) -> Retrying:
        def count(_state: object) -> None:
            metrics.inc("apply_retries_total")

        return Retrying(
            stop=stop_after_attempt(self.policy.attempts),
            wait=self.policy.backoff,
            retry=retry_if_exception_type(TransientError),
            sleep=self.sleep,
            before_sleep=count,
            reraise=True,
        )

    def _delete_keys(self, actions: Sequence[DeleteKeys], report: ApplyReport) -> None:
        latest: dict[str, DeleteKeys] = {}
        for action in actions:
            for key in action.keys:
                latest[key] = action
        if not latest:
            return
        if self.keys is None:
            raise ConfigurationError(
                "cache keys are declared but no Redis is configured (set redis_url)",
                setting="redis_url",
            )
        keys = list(latest)
        try:
            if self.policy.attempts == 1:
                # The fast path's policy (ImmediateRetryPolicy.NONE): one call, and no
                # tenacity Retrying built per delivery, which cost more than the Python
                # side of the UNLINK itself. Same outcome as a Retrying of one attempt.
                self.keys.delete(keys)
            else:
                for attempt in self._retrying():
                    with attempt:
                        self.keys.delete(keys)
            report.keys_deleted += len(keys)
            metrics.inc("keys_deleted_total", len(keys))
        except Exception as exc:
            error = _sink_error(exc, "key sink")
            if not isinstance(error, TransientError) and len(keys) > 1:
                # one key the sink cannot take must not fail the others: one by one
                for key in keys:
                    self._delete_keys([DeleteKeys((key,), latest[key].position)], report)
                return
            survivors: dict[Position | None, list[str]] = {}
            for key in keys:
                survivors.setdefault(latest[key].position, []).append(key)
            report.failures += [
                Failure(one, error)
                for position, group in survivors.items()
                for one in per_key(DeleteKeys(tuple(group), position))
            ]

    def _write_documents(self, actions: Sequence[DocumentAction], report: ApplyReport) -> None:
        if not actions:
            return
        if self.documents is None:
            raise ConfigurationError(
                "search projections are declared but no Elasticsearch is configured (set es_url)",
                setting="es_url",
            )
        pending = latest_per_document(actions)
        total, failed_for_good = len(pending), list[DocumentFailure]()
        backoff = self.policy.backoff
        for attempt_no in range(1, self.policy.attempts + 1):
            failed = self._documents_isolated(pending)
            retryable = [f for f in failed if isinstance(f.error, TransientError)]
            failed_for_good += [f for f in failed if not isinstance(f.error, TransientError)]
            if not retryable or attempt_no == self.policy.attempts:
                failed_for_good += retryable
                break
            metrics.inc("apply_retries_total")
            self.sleep(backoff.delay(attempt_no))
            pending = [f.action for f in retryable]
        report.failures += [Failure(f.action, f.error) for f in failed_for_good]
        report.documents += total - len(failed_for_good)
        metrics.inc("documents_written_total", total - len(failed_for_good))

    def _documents_isolated(self, pending: Sequence[DocumentAction]) -> list[DocumentFailure]:
        """``documents.apply(pending)``; when it raises other than transiently, each action
        alone, so the one the sink cannot take fails by itself and the rest are applied."""
        assert self.documents is not None
        try:
            return self.documents.apply(pending)
        except Exception as exc:
            error = _sink_error(exc, "document sink")
            if isinstance(error, TransientError) or len(pending) == 1:
                return [DocumentFailure(a, error) for a in pending]
        return [f for action in pending for f in self._documents_isolated([action])]

    def apply(self, actions: Sequence[Action]) -> ApplyReport:
        """Apply *actions* and report; raises only :class:`ConfigurationError` (a missing sink)."""
        report = ApplyReport()
        self._delete_keys([a for a in actions if isinstance(a, DeleteKeys)], report)
        self._write_documents([a for a in actions if not isinstance(a, DeleteKeys)], report)
        _count_actions(report)
        return report
