"""The after-commit fast path shared by the SQLAlchemy and Django integrations.

The ORM hooks collect, per transaction level, the keys of every changed row
(:class:`cachesync.transactions.Collected`, in a
:class:`~cachesync.transactions.LevelStack`); a savepoint that commits merges
into its parent, one that rolls back is dropped, and after the OUTERMOST commit
:meth:`FastPath.deliver` deletes the keys. Losing a fast-path delete loses nothing: the binlog sidecar
sees the same commit and deletes the same keys. So delivery never raises into
the application; a failure goes to the failure handler (the retry queue) and is
logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import operator
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import metrics
from .actions import DeleteKeys
from .apply import Applier, FailureHandler, LoggingFailureHandler, hand_off
from .config import get_settings
from .connections import redis_client
from .errors import ConfigurationError, HandOffError, TransientError
from .policies import ImmediateRetryPolicy
from .sinks.redis import RedisSink
from .transactions import Collected  # re-exported: its home before transactions.py

__all__ = ["Collected", "FastPath", "fast_path", "no_sync", "sync_enabled"]

log = logging.getLogger("cachesync.fastpath")

_disabled: contextvars.ContextVar[bool] = contextvars.ContextVar("cachesync_no_sync", default=False)


@contextlib.contextmanager
def no_sync() -> Iterator[None]:
    """Within this block the ORM hooks collect nothing (bulk imports, tests, migrations).

    The binlog sidecar still sees the writes: this switches off the fast path
    and the outbox intents, not the source of truth.
    """
    token = _disabled.set(True)
    try:
        yield
    finally:
        _disabled.reset(token)


def sync_enabled() -> bool:
    """False inside :func:`no_sync`."""
    return not _disabled.get()


class FastPath:
    """Deletes keys right after commit, best effort, through an :class:`Applier`.

    Built lazily from :func:`cachesync.get_settings` unless given an applier.
    One attempt only (no in-line retry): the application is waiting. Without
    ``redis_url`` it logs one WARNING naming the setting and deletes nothing
    (never a guessed Redis); ``install()`` does not raise, so applications and
    their tests (``capture_invalidations``) work before Redis is configured.
    """

    #: Batches waiting for a worker thread (an asyncio commit's deletes) before new ones are
    #: dropped: a frozen Redis must not pile up work without bound; the sidecar deletes them.
    max_pending = 1000

    def __init__(
        self, applier: Applier | None = None, failure_handler: FailureHandler | None = None
    ) -> None:
        self._applier = applier
        self._handler = failure_handler
        self._lock = threading.Lock()
        self._warned = False
        self._executor: ThreadPoolExecutor | None = None
        self._pending = 0
        self._idle = threading.Condition(self._lock)
        #: (applier, the redis-py client deliver() may call directly, or None): per applier.
        self._direct: tuple[Applier, Any] | None = None

    def configure(
        self, *, applier: Applier | None = None, failure_handler: FailureHandler | None = None
    ) -> None:
        """Replace the applier, or only the failure handler of the default one."""
        with self._lock:
            self._applier = applier
            self._handler = failure_handler
            self._warned = False  # new settings: say it again if Redis is still missing

    @contextlib.contextmanager
    def replaced(
        self, applier: Applier, failure_handler: FailureHandler | None = None
    ) -> Iterator[None]:
        """Use *applier* (and *failure_handler*) inside the block, the previous ones after it."""
        with self._lock:
            saved = self._applier, self._handler
            self._applier, self._handler = applier, failure_handler
        try:
            yield
        finally:
            with self._lock:
                self._applier, self._handler = saved

    @property
    def applier(self) -> Applier:
        """The applier in use; :class:`ConfigurationError` when no Redis is configured."""
        applier = self._resolve()
        if applier is None:
            raise ConfigurationError(_NO_REDIS, setting="redis_url")
        return applier

    def _resolve(self) -> Applier | None:
        """The given applier, else one on ``redis_url``; ``None`` (said once) without Redis.

        Looked up at the first delivery, not at ``install()``: an application may
        call :func:`cachesync.configure` after installing the hooks. Without a
        Redis there is nothing safe to delete from: the old default
        (``localhost:6379``) sent the deletes to a Redis that was not the cache.
        """
        with self._lock:
            if self._applier is None:
                settings = get_settings()
                if settings.redis_url is None:
                    if not self._warned:
                        self._warned = True
                        log.warning("cachesync fast path: %s", _NO_REDIS)
                    return None
                self._applier = Applier(
                    RedisSink(redis_client(settings), cluster=settings.redis_cluster),
                    None,
                    policy=ImmediateRetryPolicy.NONE,
                )
            return self._applier

    @property
    def handler(self) -> FailureHandler:
        return self._handler or _REFUSE

    def deliver(self, keys: Iterable[str]) -> None:
        """Delete *keys* now. Never raises: the binlog path is the safety net."""
        batch = list(dict.fromkeys(keys))
        if not batch or not get_settings().fast_path:
            return
        applier = self._applier  # read without the lock: a reference read is atomic
        if applier is None:
            applier = self._resolve()
            if applier is None:
                return  # said once at WARNING; the binlog sidecar deletes these keys
        direct = self._direct
        if direct is None or direct[0] is not applier:
            direct = self._direct = (applier, _direct_client(applier))
        client = direct[1]
        if client is None or len(batch) > _DIRECT_MAX:
            self._apply(applier, batch)
            return
        # The direct path: one UNLINK on the client of the applier's own RedisSink, counted
        # once. What applier.apply([DeleteKeys(batch)]) does for a single-node sink (one
        # attempt, one multi-key command) without its report, action lists and validated
        # counters: 232 -> 143 Python calls a commit with the hooks' other cuts
        # (bench/writepath.py). Inline, with wire_key's encoding a C-level map: each call
        # saved counts here. A failure goes through the applier after all with the error
        # replayed, not retried (_failed), so its report, metrics and hand-off are the
        # applier's own.
        try:
            client.unlink(*map(_WIRE_KEY, batch))
        except Exception as exc:
            self._failed(applier, batch, exc)
            return
        _APPLIED.add(len(batch))

    def _failed(self, applier: Applier, batch: list[str], exc: Exception) -> None:
        import redis

        if not isinstance(exc, (redis.RedisError, OSError)):
            self._apply(applier, batch)  # not Redis's answer: the applier isolates it
            return
        # RedisSink.delete's own translation, so the failure reads the same either way.
        error = TransientError(
            f"Redis UNLINK of {len(batch)} key(s) failed: {type(exc).__name__}: {exc}",
            keys=len(batch),
        )
        error.__cause__ = exc
        self._apply(Applier(_Replay(error), None, policy=ImmediateRetryPolicy.NONE), batch)

    def _apply(self, applier: Applier, batch: list[str]) -> None:
        try:
            report = applier.apply([DeleteKeys(tuple(batch))])
        except Exception:  # a hook must never break the application's commit
            metrics.inc("fast_path_failures_total", len(batch))
            log.exception("cachesync fast path: unexpected error deleting %d key(s)", len(batch))
            return
        if not report.failures:
            return
        metrics.inc("fast_path_failures_total", len(report.failures))
        try:
            hand_off(report, self.handler)
        except HandOffError as exc:
            log.warning(
                "cachesync fast path: %d key(s) not deleted (%s); the binlog "
                "sidecar will delete them",
                len(report.failures),
                exc,
            )
        except Exception:
            log.exception("cachesync fast path: the failure handler raised")

    def deliver_soon(self, keys: Iterable[str]) -> None:
        """:meth:`deliver`, but off the event loop when called on one.

        An ``AsyncSession`` commits on the event loop's thread; a Redis call there
        would stall every coroutine for up to ``redis_socket_timeout``. On a thread
        running an event loop the batch goes to a small worker pool (two threads,
        at most :attr:`max_pending` batches waiting; beyond that a batch is dropped
        with a WARNING, and the binlog sidecar deletes its keys). Elsewhere it is
        delivered at once, as :meth:`deliver` does.
        """
        # _get_running_loop(): None off a loop, where get_running_loop() raises, and a raise
        # per commit of every synchronous session is a cost the fast path need not pay.
        if asyncio._get_running_loop() is None:
            self.deliver(keys)
            return
        batch = tuple(dict.fromkeys(keys))
        if not batch:
            return
        with self._lock:
            if self._pending >= self.max_pending:
                metrics.inc("fast_path_failures_total", len(batch))
                log.warning(
                    "cachesync fast path: %d batches already wait for Redis; %d key(s) left to "
                    "the binlog sidecar",
                    self._pending,
                    len(batch),
                )
                return
            if self._executor is None:
                self._executor = ThreadPoolExecutor(2, thread_name_prefix="cachesync-fastpath")
            self._pending += 1
            executor = self._executor
        executor.submit(self._deliver_pending, batch)

    def _deliver_pending(self, batch: tuple[str, ...]) -> None:
        try:
            self.deliver(batch)
        finally:
            with self._lock:
                self._pending -= 1
                if not self._pending:
                    self._idle.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every batch :meth:`deliver_soon` handed to a worker is delivered.

        For tests and orderly shutdown; True when nothing is pending any more.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._idle.wait(left)
            return True


_REFUSE = LoggingFailureHandler()

#: What a delivered batch counts, as Applier.apply counts a successful DeleteKeys.
_APPLIED = metrics.counters(
    ("keys_deleted_total", {}), ("actions_total", {"sink": "redis", "result": "applied"})
)
#: :func:`cachesync.keys.wire_key` as a C-level callable: no Python frame per key.
_WIRE_KEY = operator.methodcaller("encode", "utf-8", "surrogateescape")
#: Above this many keys a batch goes through the applier (chunked, pipelined).
_DIRECT_MAX = 1000


def _direct_client(applier: Applier) -> Any:
    """The redis-py client :meth:`FastPath.deliver` may UNLINK on itself, or None.

    Only for an applier of one attempt over a plain single-node :class:`RedisSink`
    (the fast path's default): there one multi-key UNLINK is exactly what the
    applier would send. A cluster (keys grouped by slot), a subclass, another
    sink or a retrying policy keep the applier's own path.
    """
    sink = applier.keys
    if type(sink) is not RedisSink or sink.cluster or applier.policy.attempts != 1:
        return None
    if applier.documents is not None or sink.chunk < _DIRECT_MAX:
        return None
    return sink.client


class _Replay:
    """A key sink that raises the error the direct UNLINK met, once per call."""

    def __init__(self, error: TransientError) -> None:
        self.error = error

    def delete(self, keys: Sequence[str]) -> int:
        raise self.error

    def purge(self, pattern: str) -> int:
        raise self.error

    def ping(self) -> bool:
        return False

_NO_REDIS = (
    "no Redis is configured (setting redis_url: configure(redis_url=...), "
    "CACHESYNC_REDIS_URL, or Django's CACHESYNC['REDIS_URL'] / CACHE_ALIAS), so keys are "
    "NOT deleted after commit; only the binlog sidecar deletes them"
)

#: The process-wide fast path the ORM hooks use.
fast_path = FastPath()
