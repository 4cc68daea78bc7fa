"""In-memory twins of the services cachesync talks to, held to the same contracts.

Each twin implements the protocol or base class its real counterpart does
(:class:`~cachesync.sinks.base.KeySink`, :class:`~cachesync.sinks.base.DocumentSink`,
:class:`~cachesync.binlog.checkpoint.CheckpointStore`,
:class:`~cachesync.apply.FailureHandler`), so an :class:`~cachesync.apply.Applier`
or a sidecar built on them behaves as in production, minus the network.
``tests/integration/test_sink_contract.py`` runs the same cases against the
twins and the real Redis / Elasticsearch-API server: where the twins differ
from the real service, that test fails.

Faults are switches, not mocks: ``down = True`` makes every call fail the way an
unreachable server does (:class:`~cachesync.errors.TransientError`), and
:meth:`MemoryDocumentSink.reject` makes chosen documents fail the way a mapping
error does (:class:`~cachesync.errors.PermanentError`).
"""

from __future__ import annotations

import collections
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..actions import Action, DeleteDoc, DeleteKeys, DocumentAction, IndexDoc, per_key
from ..apply import Applier, ApplyReport, Failure, FailureHandler
from ..binlog.checkpoint import CheckpointStore, StoredCheckpoint
from ..changes import Position
from ..deadletters import DeadLetterStore, PoisonChange
from ..errors import CacheSyncError, HandOffError, PermanentError, TransientError
from ..policies import RetryPolicy
from ..sinks.base import DocumentFailure

__all__ = [
    "MemoryCheckpointStore",
    "MemoryDeadLetterStore",
    "MemoryDocumentSink",
    "MemoryKeySink",
    "MemoryRetryQueue",
    "RecordingFailureHandler",
    "StoredDocument",
]


class MemoryKeySink:
    """A :class:`~cachesync.sinks.base.KeySink` over a dict: a Redis that only stores and deletes.

    ``values`` is the cache (fill it with :meth:`set` to see what an invalidation
    removes); ``deleted`` lists every key a successful :meth:`delete` named, in
    order; ``calls`` every key list :meth:`delete` was called with, failed or not
    (one entry per round trip, as the real sink makes one per batch).
    Thread-safe, like a Redis connection pool.
    """

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.deleted: list[str] = []
        self.calls: list[list[str]] = []
        #: When true, every call fails as an unreachable Redis does.
        self.down = False
        self._fail_next = 0
        self._lock = threading.Lock()
        self._thawed = threading.Event()
        self._thawed.set()

    def freeze(self) -> None:
        """Make every call hang until :meth:`thaw`, as a Redis stopped with SIGSTOP does."""
        self._thawed.clear()

    def thaw(self) -> None:
        self._thawed.set()

    def set(self, key: str, value: Any = b"1") -> None:
        with self._lock:
            self.values[key] = value

    def get(self, key: str) -> Any:
        with self._lock:
            return self.values.get(key)

    def fail_next(self, calls: int = 1) -> None:
        """Make the next *calls* deletes fail transiently, then work again."""
        with self._lock:
            self._fail_next += calls

    def delete(self, keys: Sequence[str]) -> int:
        self._thawed.wait()
        with self._lock:
            self.calls.append(list(keys))
            if self.down or self._fail_next:
                self._fail_next = max(0, self._fail_next - 1)
                raise TransientError(
                    f"Redis UNLINK of {len(keys)} key(s) failed: ConnectionError (twin is down)",
                    keys=len(keys),
                )
            existed = sum(1 for k in dict.fromkeys(keys) if self.values.pop(k, None) is not None)
            self.deleted.extend(keys)
            return existed

    def purge(self, pattern: str) -> int:
        """Delete the stored keys matching the Redis glob *pattern* (``*``, ``?``, ``[...]``, ``\\``)."""
        regex = _glob(pattern)
        with self._lock:
            if self.down:
                raise TransientError(f"Redis SCAN MATCH {pattern!r} failed: twin is down")
            matched = [k for k in self.values if regex.fullmatch(k)]
        return self.delete(matched) if matched else 0

    def ping(self) -> bool:
        return not self.down


def _glob(pattern: str) -> re.Pattern[str]:
    """The regular expression of a Redis glob pattern."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end]
                body = "^" + body[1:] if body.startswith("^") else body
                out.append(f"[{body}]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


@dataclass(frozen=True)
class StoredDocument:
    """A document as the twin stores it: its external version and body."""

    version: int
    source: dict[str, Any]


class MemoryDocumentSink:
    """A :class:`~cachesync.sinks.base.DocumentSink` with Elasticsearch's external versions.

    A write whose version is not above the stored one loses (as a 409 does, which
    is success), a delete of a missing document succeeds, and deletes leave a
    version tombstone, as real Elasticsearch keeps for ``index.gc_deletes``
    (60 s by default; the twin keeps it forever, so never rely on it either way).
    """

    def __init__(self) -> None:
        self.indexes: dict[str, dict[str, StoredDocument]] = collections.defaultdict(dict)
        self._tombstones: dict[tuple[str, str], int] = {}
        self.calls: list[list[DocumentAction]] = []
        #: When true, every request fails as an unreachable Elasticsearch does.
        self.down = False
        self._rejects: list[Callable[[IndexDoc], str | None]] = []
        self._throttles: list[list[Any]] = []  # [predicate, remaining]
        self._lock = threading.Lock()
        self._thawed = threading.Event()
        self._thawed.set()

    def freeze(self) -> None:
        """Make every request hang until :meth:`thaw`: an Elasticsearch that accepts
        connections and never answers (SIGSTOP), the failure a timeout alone handles worst."""
        self._thawed.clear()

    def thaw(self) -> None:
        self._thawed.set()

    def reject(self, why: Callable[[IndexDoc], str | None]) -> None:
        """Refuse every document for which *why(action)* returns a reason (a mapping error, 400)."""
        self._rejects.append(why)

    def throttle(self, which: Callable[[DocumentAction], bool], times: int = 1) -> None:
        """Answer 429 (transient) for the next *times* attempts at each action *which* selects."""
        self._throttles.append([which, times])

    def get(self, index: str, doc_id: str) -> dict[str, Any] | None:
        """The stored body of ``index/doc_id``, or ``None``."""
        stored = self.indexes.get(index, {}).get(doc_id)
        return None if stored is None else dict(stored.source)

    def version(self, index: str, doc_id: str) -> int | None:
        stored = self.indexes.get(index, {}).get(doc_id)
        return None if stored is None else stored.version

    def documents(self, index: str) -> dict[str, dict[str, Any]]:
        """Every document of *index*: id -> body."""
        return {i: dict(d.source) for i, d in self.indexes.get(index, {}).items()}

    def apply(self, actions: Sequence[DocumentAction]) -> list[DocumentFailure]:
        self._thawed.wait()
        with self._lock:
            self.calls.append(list(actions))
            if self.down:
                raise TransientError(
                    f"Elasticsearch bulk of {len(actions)} document(s) failed: "
                    "ConnectionError (twin is down)",
                    documents=len(actions),
                )
            failures = []
            for action in actions:
                error = self._apply_one(action)
                if error is not None:
                    failures.append(DocumentFailure(action, error))
            return failures

    def purge(self, index: str, position: Position) -> int:
        """Delete every document of *index* stored with a version below *position*'s."""
        with self._lock:
            if self.down:
                raise TransientError(f"Elasticsearch scan of {index} failed: twin is down")
            ids = list(self.indexes.get(index, {}))
        failures = self.apply([DeleteDoc(index, doc_id, position) for doc_id in ids])
        if failures:
            raise failures[0].error
        return sum(1 for doc_id in ids if doc_id not in self.indexes.get(index, {}))

    def _apply_one(self, action: DocumentAction) -> CacheSyncError | None:
        for throttle in self._throttles:
            if throttle[1] > 0 and throttle[0](action):
                throttle[1] -= 1
                return TransientError(
                    f"Elasticsearch {action.index}/{action.doc_id}: 429 Too Many Requests",
                    index=action.index,
                    id=action.doc_id,
                    status=429,
                )
        index = self.indexes[action.index]
        stored = index.get(action.doc_id)
        known = (
            stored.version
            if stored is not None
            else self._tombstones.get((action.index, action.doc_id))
        )
        if isinstance(action, IndexDoc):
            for why in self._rejects:
                reason = why(action)
                if reason:
                    return PermanentError(
                        f"Elasticsearch index {action.index}/{action.doc_id}: 400 {reason}",
                        index=action.index,
                        id=action.doc_id,
                        status=400,
                    )
        if known is not None and action.version <= known:
            return None  # 409: a newer (or the same) change already won
        if isinstance(action, DeleteDoc):
            index.pop(action.doc_id, None)
            self._tombstones[(action.index, action.doc_id)] = action.version
        else:
            index[action.doc_id] = StoredDocument(action.version, dict(action.document))
        return None


class MemoryCheckpointStore(CheckpointStore):
    """A :class:`~cachesync.binlog.checkpoint.CheckpointStore` in a dict (durable for the process).

    ``saves`` counts successful saves; ``down = True`` makes every call fail as
    an unreachable database does.
    """

    def __init__(self) -> None:
        self.checkpoints: dict[str, StoredCheckpoint] = {}
        self.saves = 0
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise TransientError("checkpoint store unreachable (twin is down)")

    def load(self, name: str) -> StoredCheckpoint | None:
        self._check()
        return self.checkpoints.get(name)

    def save(self, name: str, position: str, commit_time: float | None = None) -> None:
        self._check()
        self.checkpoints[name] = StoredCheckpoint(name, position, commit_time, time.time())
        self.saves += 1

    def delete(self, name: str) -> None:
        self._check()
        self.checkpoints.pop(name, None)

    def names(self, prefix: str) -> list[str]:
        self._check()
        return sorted(n for n in self.checkpoints if n.startswith(prefix))

    def describe(self) -> str:
        return "memory"


class MemoryDeadLetterStore(DeadLetterStore):
    """A :class:`~cachesync.deadletters.DeadLetterStore` in a list; ``refuse = True`` refuses."""

    def __init__(self, *, refuse: bool = False) -> None:
        self.buried: list[PoisonChange] = []
        self.refuse = refuse

    def bury(self, letters: Sequence[PoisonChange]) -> None:
        if self.refuse:
            raise HandOffError(f"{len(letters)} dead letter(s): the store refuses")
        self.buried.extend(letters)


class RecordingFailureHandler(FailureHandler):
    """Keeps every failure handed to it; with ``refuse = True`` it refuses, as a full outage does.

    Given an *inner* handler it records what the inner one accepted and passes
    its refusals on: a counting wrapper around a real :class:`RetryQueue`.
    Thread-safe (the sidecar and the fast path may share a handler).
    """

    def __init__(self, inner: FailureHandler | None = None, *, refuse: bool = False) -> None:
        self.inner = inner
        self.failures: list[Failure] = []
        self.calls = 0
        self.refuse = refuse
        self._lock = threading.Lock()

    def handle(self, failures: Sequence[Failure]) -> None:
        if self.refuse:
            with self._lock:
                self.calls += 1
            raise HandOffError(f"{len(failures)} failed action(s): the handler refuses")
        if self.inner is not None:
            self.inner.handle(failures)
        with self._lock:
            self.calls += 1
            self.failures.extend(failures)

    @property
    def actions(self) -> list[Action]:
        return [f.action for f in self.failures]

    @property
    def keys(self) -> list[str]:
        """The cache keys of the failed key deletes, in the order they failed."""
        return [k for a in self.actions if isinstance(a, DeleteKeys) for k in a.keys]


@dataclass
class _Waiting:
    failure: Failure
    attempts: int


@dataclass
class MemoryRetryQueue(FailureHandler):
    """The retry path without Kafka: failures wait per key, :meth:`replay` retries them.

    Per-key order holds (a key's actions replay in the order they failed); a
    failure that has failed ``policy.attempts`` times, or permanently, becomes a
    dead letter. There is no clock: tests call :meth:`replay` when they want the
    next round, which is the backoff made explicit.
    """

    policy: RetryPolicy = RetryPolicy.FAST
    dead_letters: list[Failure] = field(default_factory=list)
    _waiting: collections.OrderedDict[str, list[_Waiting]] = field(
        default_factory=collections.OrderedDict
    )

    def handle(self, failures: Sequence[Failure]) -> None:
        for failure in failures:
            for action in per_key(failure.action):
                one = Failure(action, failure.error, failure.first_failed_at, failure.attempts)
                if not one.transient or one.attempts >= self.policy.attempts:
                    self.dead_letters.append(one)
                    continue
                self._waiting.setdefault(_key(action), []).append(_Waiting(one, one.attempts))

    @property
    def pending(self) -> list[Action]:
        return [w.failure.action for queue in self._waiting.values() for w in queue]

    def replay(self, applier: Applier) -> ApplyReport:
        """Apply every waiting action once, a key's queue in order; requeue what fails again.

        When a key's action fails, the actions queued behind it wait for the next
        round untried, so a key's actions are never applied out of order.
        """
        waiting, self._waiting = self._waiting, collections.OrderedDict()
        report = ApplyReport()
        for key, queue in waiting.items():
            for n, item in enumerate(queue):
                one = applier.apply([item.failure.action])
                report.keys_deleted += one.keys_deleted
                report.documents += one.documents
                report.failures += one.failures
                if not one.failures:
                    continue
                failed = one.failures[0]
                self.handle(
                    [
                        Failure(
                            failed.action,
                            failed.error,
                            item.failure.first_failed_at,
                            item.attempts + 1,
                        )
                    ]
                )
                if key in self._waiting:  # still retryable: its successors keep waiting behind it
                    self._waiting[key].extend(queue[n + 1 :])
                else:
                    self._waiting.setdefault(key, []).extend(queue[n + 1 :])
                    if not self._waiting[key]:
                        del self._waiting[key]
                break
        return report


def _key(action: Action) -> str:
    if isinstance(action, IndexDoc | DeleteDoc):
        return f"{action.index}/{action.doc_id}"
    return action.keys[0] if action.keys else ""
