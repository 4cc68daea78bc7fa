"""Per-sink lanes: Redis and Elasticsearch make progress independently of each other.

Before lanes, one batch went to Redis and then to Elasticsearch, and the
checkpoint followed: a frozen Elasticsearch (accepting connections, never
answering) held every key delete behind its 10 s request timeout. Now the
sidecar's reading thread plans a batch and *submits* it; each sink has a
:class:`Lane`, a thread with its own :class:`~cachesync.apply.Applier` and a
bounded queue, that applies what is queued in order and hands its failures off.

Adaptive batching falls out of this: a lane takes everything queued since its
previous apply finished (up to ``merge_rows`` changes) as one batch, so an
isolated change is applied at once and a backlog travels in large batches,
without a fixed waiting window.

The checkpoint rule is unchanged: the :class:`Ledger` moves the checkpoint only
past a batch that EVERY lane has applied or durably handed off.

Background work (the chunks of a large related-row fan-out, which keeps its own
durable progress: :mod:`cachesync.binlog.fanjobs`) goes to a second queue that
the ledger does not track and that a lane takes from only when no stream work
is queued, one item per apply: the stream never waits behind more than one
background chunk.

A lane that is stuck while its queue is full does not stall the stream either.
Stuck means no progress: the apply in flight has run longer than ``stuck_after``
seconds AND ``stuck_factor`` times the lane's usual apply time (a moving
average), so a slow sink that is working through large bulk requests only
holds the reader back (back-pressure), while a frozen one is bypassed: the queued
actions are handed to the retry path at once (counted as ``lane_handoffs_total``),
which settles them for the checkpoint; the retry consumer applies them when the
sink answers again. What is in flight finishes or fails on its own timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .. import metrics
from ..actions import Action, DeleteKeys, per_key
from ..apply import Applier, ApplyReport, Failure, FailureHandler, hand_off
from ..errors import HandOffError, TransientError
from ..policies import LanePolicy
from .checkpoint import ResumePoint

__all__ = ["Lane", "Lanes", "Ledger", "SerialHandler"]

log = logging.getLogger("cachesync.sidecar")


class SerialHandler(FailureHandler):
    """One hand-off at a time: the lanes and the reading thread share the retry path,
    whose clients (a Kafka producer waiting for acks, an outbox transaction) are
    written for one caller at a time."""

    def __init__(self, inner: FailureHandler) -> None:
        self.inner = inner
        self._lock = threading.Lock()

    @property
    def durable(self) -> bool:
        return self.inner.durable

    def handle(self, failures: Sequence[Failure]) -> None:
        with self._lock:
            self.inner.handle(failures)


@dataclass
class _Entry:
    seq: int
    point: ResumePoint
    changes: int
    through: float | None


class Ledger:
    """Which submitted batches every lane has finished; thread-safe.

    Each lane keeps the sequence numbers of its unfinished batches in order; a
    batch with no work for a lane is finished for it at once. :meth:`settled` is
    the resume point of the newest batch no lane still owes, so the checkpoint
    never passes an action that is neither applied nor handed off.
    """

    def __init__(self, lanes: Sequence[str]) -> None:
        self._lock = threading.Lock()
        self._owed: dict[str, deque[int]] = {name: deque() for name in lanes}
        self._entries: deque[_Entry] = deque()
        self._seq = 0
        self._settled: ResumePoint | None = None
        self._settled_changes = 0
        self._through: float | None = None

    def open(
        self,
        point: ResumePoint,
        changes: int,
        lanes: Sequence[str],
        through: float | None = None,
    ) -> int:
        """Record a batch ending at *point* with work for *lanes*; its sequence number.

        *through* is the source time before which every change is in this or an
        earlier batch (the honest lag, :meth:`through`)."""
        with self._lock:
            self._seq += 1
            for name in lanes:
                self._owed[name].append(self._seq)
            self._entries.append(_Entry(self._seq, point, changes, through))
            self._advance()
            return self._seq

    def finish(self, lane: str, seqs: Sequence[int]) -> None:
        """*lane* applied or handed off the batches *seqs* (its oldest owed ones)."""
        with self._lock:
            owed = self._owed[lane]
            for seq in seqs:
                if owed and owed[0] == seq:
                    owed.popleft()
                else:  # out of order would be a lane bug; never settle past it
                    owed.remove(seq)
            self._advance()

    def _advance(self) -> None:
        horizon = min((owed[0] - 1 for owed in self._owed.values() if owed), default=self._seq)
        while self._entries and self._entries[0].seq <= horizon:
            entry = self._entries.popleft()
            self._settled = entry.point
            self._settled_changes += entry.changes
            if entry.through is not None:
                self._through = max(self._through or 0.0, entry.through)

    def settled(self) -> tuple[ResumePoint | None, int]:
        """The newest fully handled point, and how many changes have settled in all."""
        with self._lock:
            return self._settled, self._settled_changes

    def through(self) -> float | None:
        """The newest source time before which every change has settled."""
        with self._lock:
            return self._through

    def owing(self) -> bool:
        """True while some lane has unfinished work."""
        with self._lock:
            return any(self._owed.values())


@dataclass
class _Work:
    seq: int  # 0: background work, which the ledger does not track
    actions: list[Action]
    changes: int
    done: Callable[[str], None] | None = None


@dataclass
class _Queue:
    items: deque[_Work] = field(default_factory=deque)
    actions: int = 0


class Lane:
    """One sink's worker: applies queued batches in order and hands off what fails.

    ``submit`` is called from the reading thread; it blocks while the queue is
    full (back-pressure on the binlog reader, nothing is dropped) unless the lane
    is stuck, in which case the queue is handed to the retry path. While it
    waits it calls *keepalive* (the sidecar re-checks its leader lock, whose
    connection the server would otherwise drop as idle). A hand-off
    the retry path refuses (:class:`HandOffError`) is retried with
    ``handoff_backoff`` until it is taken or the sidecar stops; the ledger never
    settles it meanwhile.
    """

    def __init__(
        self,
        name: str,
        applier: Applier,
        handler: FailureHandler,
        ledger: Ledger,
        *,
        policy: LanePolicy,
        merge_rows: int,
        stopped: threading.Event,
        sleep: Callable[[float], object],
        backoff: Callable[[int], float],
        keepalive: Callable[[], None],
    ) -> None:
        self.name = name
        self._applier = applier
        self._handler = handler
        self._ledger = ledger
        self._policy = policy
        self._merge_rows = merge_rows
        self._stopped = stopped
        self._sleep = sleep
        self._backoff = backoff
        self._keepalive = keepalive
        #: Only a retry path that can take work is worth bypassing a stuck sink for.
        self._bypass_handler = handler.durable
        self._next_bypass = 0.0
        self._bypass_attempts = 0
        self._queue = _Queue()
        self._background: deque[_Work] = deque()
        self._cond = threading.Condition()
        self._busy_since: float | None = None
        self._usual = 0.0  # moving average of apply durations, seconds
        self._closing = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"cachesync-{name}", daemon=True)
        self._thread.start()

    # -- reading thread -----------------------------------------------------------------

    def submit(
        self,
        seq: int,
        actions: list[Action],
        changes: int,
        done: Callable[[str], None] | None = None,
    ) -> bool:
        """Queue *actions* of batch *seq*; False if the sidecar stopped while waiting.
        *done(lane name)* is called on the lane thread once they are applied."""
        with self._cond:
            while (
                self._queue.items
                and self._queue.actions + len(actions) > self._policy.queue_actions
                and self.error is None
            ):
                if self._stopped.is_set():
                    return False
                if self._stuck() and self._bypass_due():
                    self._bypass()
                    continue
                self._cond.wait(0.05)
                self._keepalive()
            self.raise_error()
            self._queue.items.append(_Work(seq, actions, changes, done))
            self._queue.actions += len(actions)
            self._cond.notify_all()
        return True

    def submit_background(self, actions: list[Action], done: Callable[[str], None]) -> None:
        """Queue background *actions* (module docstring); *done* is called once applied.

        Never blocks: the caller (the fan-out worker) keeps at most a chunk or two
        in the lanes."""
        with self._cond:
            self.raise_error()
            self._background.append(_Work(0, actions, len(actions), done))
            self._cond.notify_all()

    def _stuck_for(self) -> float:
        since = self._busy_since
        return 0.0 if since is None else time.monotonic() - since

    def _stuck(self) -> bool:
        """The apply in flight has made no progress for far longer than applies take."""
        busy = self._stuck_for()
        return busy > self._policy.stuck_after and busy > self._policy.stuck_factor * self._usual

    def _bypass_due(self) -> bool:
        return self._bypass_handler and time.monotonic() >= self._next_bypass

    def _bypass(self) -> None:
        """Give a stuck lane's queued work to the retry path, settling it for the ledger.

        Called with the lane's lock held by the reading thread (the only one that
        adds work, so nothing overtakes the queue meanwhile). When the retry path
        refuses, the work goes back to the front of the queue, in order, and the
        next attempt waits ``handoff_backoff``: the lane may yet apply it itself.
        """
        stuck, self._queue = list(self._queue.items), _Queue()
        count = sum(len(w.actions) for w in stuck)
        error = TransientError(
            f"the {self.name} sink has not answered for {self._stuck_for():.1f}s "
            f"with {count} action(s) queued behind it; handed to the retry path"
        )
        failures = [Failure(one, error) for w in stuck for a in w.actions for one in per_key(a)]
        try:
            hand_off(ApplyReport(failures=failures), self._handler)
        except HandOffError as exc:
            self._bypass_attempts += 1
            delay = self._backoff(self._bypass_attempts)
            self._next_bypass = time.monotonic() + delay
            log.error(
                "cachesync: the %s lane is stuck and its %d queued action(s) could not be "
                "handed off (%s); the reader waits, next attempt in %.1fs",
                self.name,
                count,
                exc,
                delay,
            )
            self._queue.items.extendleft(reversed(stuck))
            self._queue.actions += count
            return
        self._bypass_attempts = 0
        metrics.inc("lane_handoffs_total", len(failures))
        log.warning("cachesync: %s", error)
        self._ledger.finish(self.name, [w.seq for w in stuck])

    def raise_error(self) -> None:
        """Re-raise, on the calling thread, what this lane's thread died of."""
        if self.error is not None:
            raise self.error

    def close(self, *, drain: bool, timeout: float) -> None:
        """Stop the thread: after the queue is applied (*drain*) or at once; wait up to
        *timeout* s for the batch in flight (a frozen sink may hold it longer: it is then
        abandoned unsettled, replayed from the checkpoint on the next start)."""
        with self._cond:
            self._closing = True
            if not drain:
                self._queue = _Queue()
            self._background.clear()  # the fan-out's durable progress says where to resume
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        while self._thread.is_alive() and time.monotonic() < deadline:
            with self._cond:
                if drain and self._queue.items and self._stuck() and self._bypass_due():
                    self._bypass()
            self._thread.join(0.05)
        if self._thread.is_alive():
            log.warning(
                "cachesync: the %s sink has not finished its batch in %.0fs; leaving it "
                "unsettled (it is replayed from the checkpoint on the next start)",
                self.name,
                timeout,
            )

    # -- lane thread ----------------------------------------------------------------------

    def _take(self) -> list[_Work] | None:
        """The queued batches up to ``merge_rows`` changes (at least one), then one
        background item if there is room; None to exit."""
        with self._cond:
            while not self._queue.items and not self._background:
                if self._closing:
                    return None
                self._cond.wait(0.2)
            taken: list[_Work] = []
            rows = 0
            items = self._queue.items
            while items and (not taken or rows + items[0].changes <= self._merge_rows):
                work = items.popleft()
                taken.append(work)
                rows += work.changes
                self._queue.actions -= len(work.actions)
            if self._background and (
                not taken or rows + self._background[0].changes <= self._merge_rows
            ):
                taken.append(self._background.popleft())
            self._busy_since = time.monotonic()
            self._cond.notify_all()
            return taken

    def _run(self) -> None:
        try:
            while True:
                taken = self._take()
                if taken is None:
                    return
                actions = [a for w in taken for a in w.actions]
                if self._apply(actions):
                    self._ledger.finish(self.name, [w.seq for w in taken if w.seq])
                    self._observe(taken)
                with self._cond:
                    if self._busy_since is not None:
                        took = time.monotonic() - self._busy_since
                        self._usual = took if not self._usual else 0.8 * self._usual + 0.2 * took
                    self._busy_since = None
                    self._cond.notify_all()
        except BaseException as exc:  # surfaced on the reading thread by submit/check
            log.exception("cachesync: the %s lane failed", self.name)
            with self._cond:
                self.error = exc
                self._busy_since = None
                self._cond.notify_all()

    def _observe(self, taken: list[_Work]) -> None:
        for work in taken:
            if work.done is not None:
                try:
                    work.done(self.name)
                except Exception:  # a metric must never stop a lane
                    log.exception("cachesync: metrics of the %s lane failed", self.name)

    def _apply(self, actions: list[Action]) -> bool:
        """Apply and hand off; False if the sidecar stopped while the retry path refused."""
        report = self._applier.apply(actions)
        attempts = 0
        while True:
            try:
                hand_off(report, self._handler)
                return True
            except HandOffError as exc:
                attempts += 1
                delay = self._backoff(attempts)
                log.error(
                    "cachesync: %d %s action(s) neither applied nor handed off (%s); "
                    "checkpoint held, retrying in %.1fs",
                    len(report.failures),
                    self.name,
                    exc,
                    delay,
                )
                self._sleep(delay)
                if self._stopped.is_set():
                    log.warning(
                        "cachesync: stopping with %d unapplied %s action(s); they are replayed "
                        "from the checkpoint on the next start",
                        len(report.failures),
                        self.name,
                    )
                    return False
                report = self._applier.apply([f.action for f in report.failures])


class Lanes:
    """The key lane and the document lane of one leadership term, and their ledger."""

    KEYS = "keys"
    DOCUMENTS = "documents"

    def __init__(
        self,
        applier: Applier,
        handler: FailureHandler,
        *,
        policy: LanePolicy,
        merge_rows: int,
        stopped: threading.Event,
        sleep: Callable[[float], object],
        backoff: Callable[[int], float],
        keepalive: Callable[[], None],
    ) -> None:
        self._applier = applier
        self._policy = policy
        shared = SerialHandler(handler)
        sinks = {
            self.KEYS: Applier(applier.keys, None, policy=applier.policy, sleep=applier.sleep),
            self.DOCUMENTS: Applier(
                None, applier.documents, policy=applier.policy, sleep=applier.sleep
            ),
        }
        present = [n for n, a in sinks.items() if a.keys is not None or a.documents is not None]
        self.ledger = Ledger(present)
        self._lanes: dict[str, Lane] = {
            name: Lane(
                name,
                sinks[name],
                shared,
                self.ledger,
                policy=policy,
                merge_rows=merge_rows,
                stopped=stopped,
                sleep=sleep,
                backoff=backoff,
                keepalive=keepalive,
            )
            for name in present
        }

    def submit(
        self,
        actions: Sequence[Action],
        point: ResumePoint,
        changes: int,
        *,
        through: float | None = None,
        done: Callable[[str], None] | None = None,
    ) -> bool:
        """Hand *actions* (ending at *point*) to their lanes; False if stopped while waiting.

        Raises :class:`~cachesync.errors.ConfigurationError` for actions no sink
        is configured for, and re-raises what a lane thread died of.
        """
        split = self._split(actions)
        seq = self.ledger.open(point, changes, list(split), through)
        return all(
            self._lanes[name].submit(seq, group, changes, done) for name, group in split.items()
        )

    def _split(self, actions: Sequence[Action]) -> dict[str, list[Action]]:
        """*actions* by lane, in order; raises the ConfigurationError naming the setting
        for actions no sink is configured for."""
        split: dict[str, list[Action]] = {}
        for action in actions:
            name = self.KEYS if isinstance(action, DeleteKeys) else self.DOCUMENTS
            split.setdefault(name, []).append(action)
        orphans = [a for name, group in split.items() if name not in self._lanes for a in group]
        if orphans:
            self._applier.apply(orphans)
        return split

    def submit_background(self, actions: Sequence[Action], done: Callable[[], None]) -> None:
        """Hand background *actions* to their lanes; *done()* once every lane applied its part.

        The ledger does not track them (module docstring): whoever submits keeps
        its own durable progress. Raises :class:`~cachesync.errors.ConfigurationError`
        for actions no sink is configured for."""
        split = self._split(actions)
        if not split:
            done()
            return
        left = [len(split)]
        guard = threading.Lock()

        def one(_lane: str) -> None:
            with guard:
                left[0] -= 1
                finished = left[0] == 0
            if finished:
                done()

        for name, group in split.items():
            self._lanes[name].submit_background(group, one)

    def check(self) -> None:
        """Re-raise, on the reading thread, what a lane thread died of."""
        for lane in self._lanes.values():
            lane.raise_error()

    def close(self, *, drain: bool) -> None:
        for lane in self._lanes.values():
            lane.close(drain=drain, timeout=self._policy.stop_timeout)
