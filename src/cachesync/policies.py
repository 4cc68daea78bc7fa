"""Behaviour knobs as frozen, validated policy objects with named presets.

Each policy checks itself on construction, so ``BatchPolicy(max_rows=0)`` fails
at start-up with a message naming the field, never in the middle of a stream.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from .errors import ConfigurationError

__all__ = [
    "Backoff",
    "BatchPolicy",
    "FanoutPolicy",
    "ImmediateRetryPolicy",
    "LanePolicy",
    "ReconnectPolicy",
    "RelayPolicy",
    "RetryPolicy",
    "RetryQueuePolicy",
    "SidecarPolicy",
    "XaHoldPolicy",
]


_P = TypeVar("_P")
_PRESETS = ("low_latency", "default", "throughput")


def _preset(owner: type[_P], name: str, setting: str) -> _P:
    """*owner*'s preset called *name* (any case), or a :class:`ConfigurationError` naming *setting*."""
    if name.lower() not in _PRESETS:
        raise ConfigurationError(
            f"{setting} preset {name!r} is unknown; use one of {', '.join(_PRESETS)}",
            setting=setting,
        )
    preset: _P = getattr(owner, name.upper())
    return preset


def _positive(owner: str, **values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ConfigurationError(f"{owner}.{name} must be > 0, got {value!r}")


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: the one schedule every wait in cachesync uses.

    ``delay(n)`` is the wait after the ``n``-th consecutive failure (counting from
    1): ``first * factor ** (n - 1)``, capped at ``cap``, spread by ``±jitter``
    of itself. Any ``n`` is safe (a poison record claiming attempt 5000 must not
    raise ``OverflowError``). It is also a tenacity wait strategy, so a
    ``tenacity.Retrying(wait=backoff)`` follows the same schedule. Waiting itself
    is the caller's: pass the delay to an injected ``sleep`` so tests never sleep.
    """

    first: float
    cap: float
    factor: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.first < 0 or self.cap < self.first:
            raise ConfigurationError(
                f"Backoff needs 0 <= first <= cap, got first={self.first!r} cap={self.cap!r}"
            )
        if self.factor < 1:
            raise ConfigurationError(f"Backoff.factor must be >= 1, got {self.factor!r}")
        if not 0 <= self.jitter < 1:
            raise ConfigurationError(f"Backoff.jitter must be in [0, 1), got {self.jitter!r}")

    def base(self, attempt: int) -> float:
        """The delay after failure number *attempt*, without jitter."""
        if self.first == 0:
            return 0.0
        exponent = max(0, attempt - 1)
        # Compare in logarithms: factor ** exponent overflows a float long before
        # a poison record's attempt count stops growing.
        if self.factor > 1 and exponent * math.log(self.factor) >= math.log(self.cap / self.first):
            return float(self.cap)
        return float(min(self.cap, self.first * self.factor**exponent))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """:meth:`base` with jitter, never negative."""
        base = self.base(attempt)
        spread = base * self.jitter
        return max(0.0, float(base + (rng or random).uniform(-spread, spread)))

    def __call__(self, retry_state: Any) -> float:
        """The tenacity ``wait`` protocol: the delay after ``retry_state.attempt_number``."""
        return self.delay(int(retry_state.attempt_number))


@dataclass(frozen=True)
class ImmediateRetryPolicy:
    """The short, in-line retry an applier makes before handing an action off.

    Keep it short: while it waits, the binlog stream waits too. Anything that
    still fails goes to the retry queue, which retries without blocking the stream.
    """

    attempts: int = 3
    min_wait: float = 0.05
    max_wait: float = 0.5

    NONE: ClassVar[ImmediateRetryPolicy]
    DEFAULT: ClassVar[ImmediateRetryPolicy]
    PATIENT: ClassVar[ImmediateRetryPolicy]

    def __post_init__(self) -> None:
        _positive("ImmediateRetryPolicy", attempts=self.attempts, max_wait=self.max_wait)
        if self.min_wait < 0 or self.min_wait > self.max_wait:
            raise ConfigurationError("ImmediateRetryPolicy.min_wait must be in [0, max_wait]")

    @property
    def backoff(self) -> Backoff:
        return Backoff(self.min_wait, self.max_wait)


ImmediateRetryPolicy.NONE = ImmediateRetryPolicy(attempts=1, min_wait=0, max_wait=0.001)
ImmediateRetryPolicy.DEFAULT = ImmediateRetryPolicy()
ImmediateRetryPolicy.PATIENT = ImmediateRetryPolicy(attempts=6, min_wait=0.1, max_wait=2.0)


@dataclass(frozen=True)
class BatchPolicy:
    """How the sidecar groups row changes into batches.

    ``max_delay_ms = 0`` (the default) is adaptive: a batch is what is already
    buffered when the sink finished its previous one, up to ``max_rows``
    changes, so an isolated change is applied at once and a backlog travels in
    large batches by itself. A positive ``max_delay_ms`` restores a fixed window:
    the reader keeps gathering until ``max_rows`` changes or ``max_delay_ms``
    after the first, for users who would rather trade latency for fewer,
    fuller requests. One Redis round trip and one bulk request per batch either way.

    The default's ``max_rows`` is the ``throughput`` preset's: a batch only grows
    that large when that much is already waiting (a backlog), where fewer,
    larger batches are what catches up fastest, and an idle stream's batches
    stay small whatever the bound. With 1,000 the adaptive default caught up
    with 1000-row transactions at a median 0.88x the ``throughput`` preset
    (eight alternating runs of 30,000 and 100,000 rows, bench/catchup.py);
    with 5,000, 0.99x (nine runs).
    """

    max_rows: int = 5000
    max_delay_ms: int = 0

    LOW_LATENCY: ClassVar[BatchPolicy]
    DEFAULT: ClassVar[BatchPolicy]
    THROUGHPUT: ClassVar[BatchPolicy]

    def __post_init__(self) -> None:
        _positive("BatchPolicy", max_rows=self.max_rows)
        if self.max_delay_ms < 0:
            raise ConfigurationError(
                f"BatchPolicy.max_delay_ms must be >= 0 (0: adaptive), got {self.max_delay_ms!r}"
            )

    @property
    def adaptive(self) -> bool:
        return self.max_delay_ms == 0

    @classmethod
    def preset(cls, name: str) -> BatchPolicy:
        """``low_latency``, ``default`` (adaptive) or ``throughput`` (a 200 ms window)."""
        return _preset(cls, name, "batch")


BatchPolicy.LOW_LATENCY = BatchPolicy(max_rows=200, max_delay_ms=0)
BatchPolicy.DEFAULT = BatchPolicy()
BatchPolicy.THROUGHPUT = BatchPolicy(max_rows=5000, max_delay_ms=200)


@dataclass(frozen=True)
class LanePolicy:
    """How the per-sink lanes of the sidecar (:mod:`cachesync.binlog.lanes`) queue work.

    * ``queue_actions``: the most actions one lane holds queued; a full queue
      holds the binlog reader back (nothing is dropped);
    * ``stuck_after`` / ``stuck_factor``: a lane whose current apply has run
      longer than ``stuck_after`` seconds AND ``stuck_factor`` times its usual
      apply time, while its queue is full, is stuck (a frozen sink): its queue
      goes to the retry path at once, so the other sink and the checkpoint move
      on. A sink that is slow but answering only slows the reader down;
    * ``stop_timeout``: how long a stopping sidecar waits for a lane's batch in
      flight before leaving it unsettled (it is replayed on the next start).
    """

    queue_actions: int = 50_000
    stuck_after: float = 1.0
    stuck_factor: float = 5.0
    stop_timeout: float = 15.0

    def __post_init__(self) -> None:
        _positive(
            "LanePolicy",
            queue_actions=self.queue_actions,
            stuck_after=self.stuck_after,
            stuck_factor=self.stuck_factor,
            stop_timeout=self.stop_timeout,
        )


@dataclass(frozen=True)
class FanoutPolicy:
    """How related-row fan-outs (:mod:`cachesync.binlog.fanjobs`) are bounded.

    * ``chunk``: rows per keyset chunk (one indexed range scan and one lane
      hand-off each); also the most fan-out rows planned inline with one batch;
    * ``max_jobs``: the most fan-outs waiting for the background worker; the
      reader waits for room beyond that (each is a few hundred bytes);
    * ``stop_timeout``: how long a stopping sidecar waits for the worker.
    """

    chunk: int = 1000
    max_jobs: int = 1000
    stop_timeout: float = 15.0

    def __post_init__(self) -> None:
        _positive(
            "FanoutPolicy",
            chunk=self.chunk,
            max_jobs=self.max_jobs,
            stop_timeout=self.stop_timeout,
        )


@dataclass(frozen=True)
class RetryPolicy:
    """The retry consumer's schedule: exponential backoff with jitter, then dead letter.

    ``backoff(n)`` is the delay before attempt ``n + 1`` (attempts count from 1).
    """

    attempts: int = 8
    min_backoff: float = 0.5
    max_backoff: float = 60.0
    jitter: float = 0.2

    FAST: ClassVar[RetryPolicy]
    DEFAULT: ClassVar[RetryPolicy]
    PATIENT: ClassVar[RetryPolicy]

    def __post_init__(self) -> None:
        _positive(
            "RetryPolicy",
            attempts=self.attempts,
            min_backoff=self.min_backoff,
            max_backoff=self.max_backoff,
        )
        if self.min_backoff > self.max_backoff:
            raise ConfigurationError("RetryPolicy.min_backoff must be <= max_backoff")
        if not 0 <= self.jitter < 1:
            raise ConfigurationError("RetryPolicy.jitter must be in [0, 1)")

    @property
    def schedule(self) -> Backoff:
        return Backoff(self.min_backoff, self.max_backoff, jitter=self.jitter)

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        return self.schedule.delay(attempt, rng)


RetryPolicy.FAST = RetryPolicy(attempts=5, min_backoff=0.2, max_backoff=2.0)
RetryPolicy.DEFAULT = RetryPolicy()
RetryPolicy.PATIENT = RetryPolicy(attempts=15, min_backoff=1.0, max_backoff=300.0)


@dataclass(frozen=True)
class RelayPolicy:
    """How the outbox relay polls, claims and retries rows.

    * ``batch_size`` rows are claimed, applied and settled in one transaction;
      a full batch is followed by the next one at once, a short one by a pause
      of ``poll_interval`` seconds.
    * ``retry`` schedules a row that could neither be applied nor handed off:
      ``available_at`` moves ``retry.backoff(attempts)`` into the future, and a
      row whose failures are all permanent is marked dead after
      ``retry.attempts`` tries (transient ones wait as long as it takes).
    * ``immediate`` is the applier's short in-line retry before a failure counts.
    * While the outbox database itself is unreachable the loop waits
      :attr:`outage` (derived, not a field: it doubles from ``2 * poll_interval``
      up to ``64 * poll_interval``, never beyond ``retry.max_backoff``).
    """

    batch_size: int = 200
    poll_interval: float = 0.5
    retry: RetryPolicy = RetryPolicy.DEFAULT
    immediate: ImmediateRetryPolicy = ImmediateRetryPolicy.DEFAULT

    LOW_LATENCY: ClassVar[RelayPolicy]
    DEFAULT: ClassVar[RelayPolicy]
    THROUGHPUT: ClassVar[RelayPolicy]

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int):
            raise ConfigurationError(
                f"RelayPolicy.batch_size must be an int, got {self.batch_size!r}"
            )
        _positive("RelayPolicy", batch_size=self.batch_size, poll_interval=self.poll_interval)
        if not isinstance(self.retry, RetryPolicy):
            raise ConfigurationError(f"RelayPolicy.retry must be a RetryPolicy, got {self.retry!r}")
        if not isinstance(self.immediate, ImmediateRetryPolicy):
            raise ConfigurationError(
                f"RelayPolicy.immediate must be an ImmediateRetryPolicy, got {self.immediate!r}"
            )

    @property
    def outage(self) -> Backoff:
        """The wait after the ``n``-th consecutive failure to reach the outbox database.

        Without jitter: the schedule the relay has always followed (predictable
        in logs and tests); it is one :class:`Backoff`, so adding jitter is one edit.
        """
        cap = self.retry.max_backoff
        return Backoff(
            min(2 * self.poll_interval, cap), min(cap, 64 * self.poll_interval), jitter=0.0
        )

    def row_delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """How long a row waits after its *attempt*-th failed try (``retry``'s schedule)."""
        return self.retry.backoff(attempt, rng)

    @classmethod
    def preset(cls, name: str) -> RelayPolicy:
        """``low_latency``, ``default`` or ``throughput``."""
        return _preset(cls, name, "relay")


RelayPolicy.LOW_LATENCY = RelayPolicy(batch_size=50, poll_interval=0.1)
RelayPolicy.DEFAULT = RelayPolicy()
RelayPolicy.THROUGHPUT = RelayPolicy(batch_size=1000, poll_interval=1.0)


@dataclass(frozen=True)
class RetryQueuePolicy:
    """How long the retry queue waits for Kafka, and how often it checks a broker that failed.

    ``timeout`` bounds one hand-off to Kafka (connect, send, every ``acks=all``
    acknowledgement); past it the failures go to the outbox. After a failure
    the circuit stays open for ``cooldown(n)`` seconds after the ``n``-th
    consecutive failed check (``cooldown_min`` doubling up to ``cooldown_max``,
    no jitter), then a background probe asks the broker for metadata.
    """

    timeout: float = 5.0
    cooldown_min: float = 1.0
    cooldown_max: float = 30.0

    DEFAULT: ClassVar[RetryQueuePolicy]

    def __post_init__(self) -> None:
        _positive(
            "RetryQueuePolicy",
            timeout=self.timeout,
            cooldown_min=self.cooldown_min,
            cooldown_max=self.cooldown_max,
        )
        if self.cooldown_min > self.cooldown_max:
            raise ConfigurationError(
                f"RetryQueuePolicy.cooldown_min must be <= cooldown_max, got "
                f"{self.cooldown_min!r} > {self.cooldown_max!r}"
            )

    @property
    def cooldown(self) -> Backoff:
        return Backoff(self.cooldown_min, self.cooldown_max, jitter=0.0)


RetryQueuePolicy.DEFAULT = RetryQueuePolicy()


# -- the binlog sidecar -------------------------------------------------------------------------


def _backoff_field(owner: str, name: str, value: object) -> None:
    # Before Backoff existed these fields were (first, cap) tuples: say how to spell them now.
    if not isinstance(value, Backoff):
        raise ConfigurationError(
            f"{owner}.{name} must be a Backoff, e.g. Backoff(first=0.5, cap=10.0), got {value!r}"
        )


@dataclass(frozen=True)
class ReconnectPolicy:
    """How the binlog reader notices a dead stream and how long it waits to reconnect.

    * ``backoff``: the wait before reconnect number ``n`` (the reader rebuilds its
      connection from its own resume point, never from the library's);
    * ``heartbeat``: how often the server sends a heartbeat on an idle stream;
    * ``read_timeout``: how long silence may last before the connection counts as
      dead; it must exceed ``heartbeat`` (several heartbeats), or an idle but healthy
      stream would be torn down over and over;
    * ``connect_timeout``: seconds for the TCP connect and handshake, unless the
      connection settings name their own.
    """

    backoff: Backoff = Backoff(first=0.2, cap=5.0)
    heartbeat: float = 1.0
    read_timeout: float = 5.0
    connect_timeout: float = 5.0

    DEFAULT: ClassVar[ReconnectPolicy]

    def __post_init__(self) -> None:
        _backoff_field("ReconnectPolicy", "backoff", self.backoff)
        _positive(
            "ReconnectPolicy",
            heartbeat=self.heartbeat,
            read_timeout=self.read_timeout,
            connect_timeout=self.connect_timeout,
        )
        if self.read_timeout <= self.heartbeat:
            raise ConfigurationError(
                f"ReconnectPolicy.read_timeout must be > heartbeat ({self.heartbeat!r}), "
                f"got {self.read_timeout!r}"
            )


ReconnectPolicy.DEFAULT = ReconnectPolicy()


@dataclass(frozen=True)
class XaHoldPolicy:
    """How much the binlog reader holds in memory for prepared XA transactions.

    Rows of an ``XA PREPARE`` wait for the matching ``XA COMMIT``
    (:mod:`cachesync.binlog.xa`); these bounds keep a server with many
    forgotten prepared transactions from exhausting the sidecar's memory:

    * ``max_held_rows``: rows held for all prepared transactions together
      (setting ``xa_max_held_rows``); 0 holds none: the COMMIT of every XA
      transaction with rows is then an ERROR, as below;
    * ``max_prepared``: prepared transactions remembered, with or without rows
      (setting ``xa_max_prepared``).

    Past a bound the oldest transactions are evicted, logged as ERROR naming
    the xid, and no longer hold the checkpoint; their COMMIT cannot be applied
    (``cachesync verify --repair`` or a reindex restores them).
    """

    max_held_rows: int = 100_000
    max_prepared: int = 10_000

    DEFAULT: ClassVar[XaHoldPolicy]

    def __post_init__(self) -> None:
        if self.max_held_rows < 0:
            raise ConfigurationError(
                f"XaHoldPolicy.max_held_rows must be >= 0, got {self.max_held_rows!r}"
            )
        _positive("XaHoldPolicy", max_prepared=self.max_prepared)


XaHoldPolicy.DEFAULT = XaHoldPolicy()


@dataclass(frozen=True)
class SidecarPolicy:
    """Timing knobs of the sidecar loop (the batch size itself is the ``batch`` setting).

    * ``idle_wait``: how long one poll of the binlog waits for a first change;
    * ``handoff_backoff``: the wait before re-applying a batch that could not be
      handed off (the checkpoint stays put meanwhile);
    * ``idle_checkpoint_seconds`` / ``idle_checkpoint_bytes``: while no watched
      row changes, the position still moves over other tables' transactions; it
      is saved at most every ``idle_checkpoint_seconds``, and only when it moved
      by at least ``idle_checkpoint_bytes`` or to another file. The threshold keeps
      the sidecar from chasing its own checkpoint writes when the checkpoint
      table lives on the watched server, while a file rotation is always saved
      so the checkpoint never points at a file that may be purged;
    * ``lock_wait``: seconds per ``GET_LOCK`` attempt of a standby (whole seconds;
      0 polls without waiting);
    * ``lock_check_seconds``: how often an idle leader pings its lock connection;
    * ``lock_session_timeout``: ``wait_timeout`` of the lock connection, so that the
      server drops the lock of a leader that vanished without closing its socket
      (host down, network partition) after this many seconds of silence;
    * ``retry_backoff``: the wait after a transient start-up failure;
    * ``reconnect``: the binlog reader's :class:`ReconnectPolicy`;
    * ``lanes``: the per-sink queues (:class:`LanePolicy`);
    * ``fanout``: the bounds of related-row fan-outs (:class:`FanoutPolicy`);
    * ``xa``: what prepared XA transactions may hold in memory (:class:`XaHoldPolicy`);
    * ``checkpoint_interval``: the most often a busy stream saves its checkpoint
      (an idle one saves what settled at once); a crash in between only repeats work.
    """

    batch: BatchPolicy = field(default_factory=lambda: BatchPolicy.DEFAULT)
    idle_wait: float = 1.0
    handoff_backoff: Backoff = Backoff(first=0.5, cap=30.0)
    idle_checkpoint_seconds: float = 1.0
    idle_checkpoint_bytes: int = 64 * 1024
    lock_wait: float = 1.0
    lock_check_seconds: float = 2.0
    lock_session_timeout: int = 30
    retry_backoff: Backoff = Backoff(first=0.5, cap=10.0)
    reconnect: ReconnectPolicy = field(default_factory=lambda: ReconnectPolicy.DEFAULT)
    lanes: LanePolicy = field(default_factory=LanePolicy)
    fanout: FanoutPolicy = field(default_factory=FanoutPolicy)
    checkpoint_interval: float = 0.1
    xa: XaHoldPolicy = field(default_factory=lambda: XaHoldPolicy.DEFAULT)

    DEFAULT: ClassVar[SidecarPolicy]

    def __post_init__(self) -> None:
        if not isinstance(self.batch, BatchPolicy):
            raise ConfigurationError(
                f"SidecarPolicy.batch must be a BatchPolicy, got {self.batch!r}"
            )
        if not isinstance(self.lanes, LanePolicy):
            raise ConfigurationError(
                f"SidecarPolicy.lanes must be a LanePolicy, got {self.lanes!r}"
            )
        if not isinstance(self.fanout, FanoutPolicy):
            raise ConfigurationError(
                f"SidecarPolicy.fanout must be a FanoutPolicy, got {self.fanout!r}"
            )
        if not isinstance(self.reconnect, ReconnectPolicy):
            raise ConfigurationError(
                f"SidecarPolicy.reconnect must be a ReconnectPolicy, got {self.reconnect!r}"
            )
        if not isinstance(self.xa, XaHoldPolicy):
            raise ConfigurationError(f"SidecarPolicy.xa must be an XaHoldPolicy, got {self.xa!r}")
        _backoff_field("SidecarPolicy", "handoff_backoff", self.handoff_backoff)
        _backoff_field("SidecarPolicy", "retry_backoff", self.retry_backoff)
        # idle_wait 0 would spin on an idle stream; the server's wait_timeout is >= 1.
        _positive(
            "SidecarPolicy",
            idle_wait=self.idle_wait,
            lock_session_timeout=self.lock_session_timeout,
        )
        for name, value in (
            ("idle_checkpoint_seconds", self.idle_checkpoint_seconds),
            ("idle_checkpoint_bytes", self.idle_checkpoint_bytes),
            ("lock_wait", self.lock_wait),
            ("lock_check_seconds", self.lock_check_seconds),
            ("checkpoint_interval", self.checkpoint_interval),
        ):
            if value < 0:
                raise ConfigurationError(f"SidecarPolicy.{name} must be >= 0, got {value!r}")


SidecarPolicy.DEFAULT = SidecarPolicy()
