"""The retry consumer's pure core: per-key order, backoff, coalescing, and the offset watermark.

:class:`Scheduler` decides what the retry consumer does, and does no I/O: no
Kafka, no sinks, no database; time comes from an injected clock. The consumer
(:mod:`cachesync.kafka.retry_consumer`) feeds it the records it polls, applies
the :class:`Turn` s it hands out, reports each outcome back, publishes the dead
letters it queues, and commits the offsets it says are committable.

* **Per-key FIFO.** Records are queued by key (a cache key, or ``index/doc_id``).
  Only a queue's head is scheduled; a newer record of a waiting key queues
  behind it and never overtakes it, while other keys flow past it.
* **Due heap with backoff.** A record that has failed ``n`` times is due
  ``policy.backoff(n)`` after its last failure; a fresh (``attempt == 0``) one
  at once. Rescheduling pushes a new heap entry; stale ones are skipped. A
  ``last_failed_at`` in the future (a skewed clock, a forged record) is clamped
  to now on receipt, so no record is due later than ``now + backoff(n)``:
  nothing a record says can hold its key longer than ``policy.max_backoff``.
* **Coalescing.** A key's whole queue is applied as one action, the one with
  the newest position (the later record on a tie). Exact, because deleting a
  key twice is deleting it once and a document is re-read before it is written.
* **Isolation.** A record is judged alone: an undecodable one is one dead
  letter; a permanent failure dead-letters only the record whose action was
  applied, and the key's other records get a turn of their own at once (a
  transient failure still costs every record of the key one attempt: they
  waited on the same sink).
* **Offset watermark.** Per partition, the committable offset is the lowest one
  not yet finished: applied, or acknowledged by the dead-letter topic.
* **Flow.** Intake pauses at ``max_pending`` held records and resumes below half.
* **Wake.** When a sink that was failing succeeds again, every key whose head
  waits on it becomes due at once: recovery takes one round trip, not the
  longest backoff.
"""

from __future__ import annotations

import collections
import datetime as dt
import enum
import heapq
import logging
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from ..actions import Action, DeleteKeys
from ..errors import CacheSyncError, DecodeError, TransientError
from ..policies import RetryPolicy
from .client import Record
from .codec import (
    REASON_EXHAUSTED,
    REASON_PERMANENT,
    REASON_UNDECODABLE,
    DeadLetter,
    ErrorInfo,
    RecordRef,
    RetryMessage,
    decode_message,
)

__all__ = [
    "SINK_DATABASE",
    "SINK_REDIS",
    "SINK_SEARCH",
    "Flow",
    "Offsets",
    "Outcome",
    "Partition",
    "Scheduler",
    "Turn",
    "newest",
    "sink_of",
]

log = logging.getLogger("cachesync.kafka")

#: ``(topic, partition)``.
Partition = tuple[str, int]

#: What a key waits on after a transient failure (a recovery of it wakes the key).
SINK_REDIS = "redis"
SINK_SEARCH = "search"
SINK_DATABASE = "database"


def sink_of(action: Action) -> str:
    """The sink that applies *action*."""
    return SINK_REDIS if isinstance(action, DeleteKeys) else SINK_SEARCH


class Offsets:
    """Offsets of one partition received but not finished; the committable offset.

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


@dataclass(eq=False)  # identity: a queue removes THIS record, not an equal one
class _Item:
    """One retry record held until it is applied or dead-lettered."""

    partition: Partition
    offset: int
    timestamp: int | None
    message: RetryMessage
    due: float
    sink: str | None = None


def newest_item(queue: Iterable[_Item]) -> _Item:
    """The record standing for a key's queue (:func:`newest` over their actions)."""
    items = list(queue)
    action = newest(i.message.action for i in items)
    return next(i for i in reversed(items) if i.message.action is action)


def newest(actions: Iterable[Action]) -> Action:
    """The action standing for a key's queue: the newest position wins, then the latest."""
    it = iter(actions)
    best = next(it)
    for action in it:
        if best.position is None or (
            action.position is not None and action.position.version >= best.position.version
        ):
            best = action
    return best


@dataclass(frozen=True)
class Turn:
    """A due key: the one coalesced *action* for its *records* queued records."""

    key: str
    action: Action
    records: int


@dataclass(frozen=True)
class Outcome:
    """How a :class:`Turn` went: *error* ``None`` is success; *sink* is what it waited on."""

    key: str
    sink: str
    error: CacheSyncError | None = None


class Flow(enum.Enum):
    """What to do with the intake (Kafka partitions) after a poll."""

    PAUSE = "pause"
    RESUME = "resume"
    KEEP = "keep"


class Scheduler:
    """Holds polled retry records until they are applied or dead-lettered (module doc).

    Not thread-safe; never blocks; raises nothing for any input (an undecodable
    record becomes a dead letter). *clock* is wall-clock seconds (due times come
    from the records' ``last_failed_at``); *identity* is recorded in dead letters.
    """

    def __init__(
        self,
        policy: RetryPolicy = RetryPolicy.DEFAULT,
        *,
        max_batch: int = 500,
        max_pending: int = 50_000,
        clock: Callable[[], float],
        rng: random.Random | None = None,
        identity: Mapping[str, object] | None = None,
    ) -> None:
        self.policy = policy
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.clock = clock
        self.rng = rng or random.Random()
        self.identity = dict(identity or {})
        self._queues: dict[str, collections.deque[_Item]] = {}
        self._due: list[tuple[float, int, str]] = []
        self._seq = 0
        self._offsets: dict[Partition, Offsets] = {}
        self._letters: list[tuple[DeadLetter, Partition, int]] = []
        self._failing: set[str] = set()
        #: The record each outstanding turn applied (a permanent failure is its alone).
        self._taken: dict[str, _Item] = {}

    def _utcnow(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), dt.UTC)

    # -- intake -----------------------------------------------------------------------

    def receive(self, record: Record) -> DeadLetter | None:
        """Hold *record*: queue it behind its key, or, undecodable, as a dead letter (returned).

        Never raises: whatever *record* holds, it is either queued or one dead letter.
        """
        part = (record.topic, record.partition)
        self._offsets.setdefault(part, Offsets()).add(record.offset)
        ref = RecordRef(record.topic, record.partition, record.offset, record.timestamp)
        try:
            message = self._clamped(decode_message(record.value))
        except Exception as exc:  # decode is total (DecodeError); anything else is a bug, same fate
            if not isinstance(exc, DecodeError):
                log.exception("cachesync retry consumer: decoding %s raised unexpectedly", ref)
            log.error("cachesync retry consumer: undecodable record %s: %s", ref, exc)
            letter = DeadLetter(
                REASON_UNDECODABLE,
                ErrorInfo.of(exc),
                self._utcnow(),
                ref,
                None,
                record.key,
                record.value,
                self.identity,
            )
            self._letters.append((letter, part, record.offset))
            return letter
        if message.attempt == 0:
            due = self.clock()
        else:
            due = message.last_failed_at.timestamp() + self.policy.backoff(
                message.attempt, self.rng
            )
        item = _Item(part, record.offset, record.timestamp, message, due)
        queue = self._queues.get(message.key)
        if queue:
            queue.append(item)  # behind the key's older records: never overtakes them
            return None
        self._queues[message.key] = collections.deque([item])
        self._schedule(message.key, due)
        return None

    def _clamped(self, message: RetryMessage) -> RetryMessage:
        """*message* with failure times in the future moved to now (see the module docstring)."""
        now = self._utcnow()
        if message.last_failed_at <= now and message.first_failed_at <= now:
            return message
        return replace(
            message,
            first_failed_at=min(message.first_failed_at, now),
            last_failed_at=min(message.last_failed_at, now),
        )

    def _schedule(self, key: str, due: float) -> None:
        self._seq += 1
        heapq.heappush(self._due, (due, self._seq, key))

    def next_due(self) -> float | None:
        """The earliest due time scheduled (possibly of a key that finished since), or None."""
        return self._due[0][0] if self._due else None

    # -- turns ------------------------------------------------------------------------

    def take_due(self) -> list[Turn]:
        """Up to ``max_batch`` keys due now, each coalesced to one action.

        Each must be answered by one :class:`Outcome` in :meth:`complete`; until
        then the key is neither due again nor finished.
        """
        now = self.clock()
        turns: list[Turn] = []
        while self._due and len(turns) < self.max_batch:
            due, _, key = self._due[0]
            queue = self._queues.get(key)
            if not queue or queue[0].due != due:
                heapq.heappop(self._due)  # stale entry: the key finished or was rescheduled
                continue
            if due > now:
                break
            heapq.heappop(self._due)
            chosen = newest_item(queue)
            self._taken[key] = chosen
            turns.append(Turn(key, chosen.message.action, len(queue)))
        return turns

    def complete(self, outcomes: Sequence[Outcome]) -> int:
        """Record how the turns went: finish, reschedule with backoff, or queue dead letters.

        Returns how many records were applied (finished by a success).

        A transient error costs every record of the key one attempt; a record out
        of attempts, or any record of a key that failed permanently, becomes a
        dead letter (see :meth:`letters`). A sink that succeeds after failing
        wakes the keys waiting on it.
        """
        at = self._utcnow()
        recovered: set[str] = set()
        failing: set[str] = set()
        applied = 0
        for outcome in outcomes:
            chosen = self._taken.pop(outcome.key, None)
            if outcome.key not in self._queues:
                continue  # revoked meanwhile
            if outcome.error is None:
                recovered.add(outcome.sink)
                applied += self._succeed(outcome.key)
            elif isinstance(outcome.error, TransientError):
                failing.add(outcome.sink)
                self._fail(outcome.key, outcome.error, at, outcome.sink)
            else:
                self._dead_letter(outcome.key, chosen, outcome.error, at)
        woken = recovered & self._failing
        self._failing = (self._failing - recovered) | failing
        if woken:
            self._wake(woken)
        return applied

    def _succeed(self, key: str) -> int:
        queue = self._queues.pop(key)
        for item in queue:
            self._offsets[item.partition].finish(item.offset)
        return len(queue)

    def _fail(self, key: str, error: CacheSyncError, at: dt.datetime, sink: str) -> None:
        queue = self._queues[key]
        exhausted: list[_Item] = []
        kept: collections.deque[_Item] = collections.deque()
        for item in queue:
            item.message = item.message.failed_again(error, at)
            item.sink = sink
            (exhausted if item.message.attempt >= self.policy.attempts else kept).append(item)
        if exhausted:
            self._to_letters(exhausted, REASON_EXHAUSTED, ErrorInfo.of(error), at)
        if not kept:
            del self._queues[key]
            return
        self._queues[key] = kept
        head = kept[0]
        head.due = self.clock() + self.policy.backoff(head.message.attempt, self.rng)
        self._schedule(key, head.due)

    def _dead_letter(
        self, key: str, chosen: _Item | None, error: CacheSyncError, at: dt.datetime
    ) -> None:
        """Dead-letter the record whose action failed permanently; its key's others go again now.

        Only *chosen* (the record the turn applied) is known to fail: another
        record of the key carries another action (another position, another row
        reference) and may well succeed, so it gets a turn of its own rather than
        sharing a verdict it never earned.
        """
        queue = self._queues[key]
        if chosen is None or chosen not in queue:
            chosen = newest_item(queue)
        queue.remove(chosen)
        chosen.message = chosen.message.failed_again(error, at)
        log.error("cachesync retry consumer: %s failed permanently: %s", key, error)
        self._to_letters([chosen], REASON_PERMANENT, ErrorInfo.of(error), at)
        if not queue:
            del self._queues[key]
            return
        head = queue[0]
        head.due = self.clock()
        self._schedule(key, head.due)

    def _to_letters(
        self, items: Sequence[_Item], reason: str, error: ErrorInfo, at: dt.datetime
    ) -> None:
        for item in items:
            ref = RecordRef(item.partition[0], item.partition[1], item.offset, item.timestamp)
            letter = DeadLetter(reason, error, at, ref, item.message, consumer=self.identity)
            self._letters.append((letter, item.partition, item.offset))

    def _wake(self, sinks: set[str]) -> None:
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

    # -- dead letters -----------------------------------------------------------------

    def letters(self) -> list[DeadLetter]:
        """Dead letters waiting to be published, oldest first; their offsets stay open."""
        return [letter for letter, _, _ in self._letters]

    def letters_published(self, count: int) -> list[DeadLetter]:
        """The first *count* of :meth:`letters` are acknowledged: finish their offsets."""
        done, self._letters = self._letters[:count], self._letters[count:]
        for _, part, offset in done:
            if part in self._offsets:
                self._offsets[part].finish(offset)
        return [letter for letter, _, _ in done]

    # -- offsets, partitions, flow ----------------------------------------------------

    def committable(self) -> dict[Partition, int]:
        """Per partition, the offset to commit where it moved past the last :meth:`committed`."""
        found: dict[Partition, int] = {}
        for part, tracker in self._offsets.items():
            target = tracker.committable()
            if target > tracker.committed:
                found[part] = target
        return found

    def committed(self, offsets: Mapping[Partition, int]) -> None:
        """The broker took these commits."""
        for part, offset in offsets.items():
            tracker = self._offsets.get(part)
            if tracker is not None:
                tracker.committed = offset

    def revoke(self, partitions: Iterable[Partition]) -> None:
        """Forget everything held from *partitions*: another consumer replays it."""
        gone = set(partitions)
        for key in [k for k, q in self._queues.items() if q[0].partition in gone]:
            del self._queues[key]
        self._letters = [entry for entry in self._letters if entry[1] not in gone]
        for part in gone:
            self._offsets.pop(part, None)

    def pending(self) -> int:
        """Records held (queued, or dead letters not yet acknowledged)."""
        return sum(len(q) for q in self._queues.values()) + len(self._letters)

    def flow(self, paused: bool) -> Flow:
        """PAUSE at or above ``max_pending`` (again after each rebalance), RESUME a paused
        intake once below half of it, else KEEP."""
        pending = self.pending()
        if pending >= self.max_pending:
            return Flow.PAUSE
        if paused and pending < self.max_pending // 2:
            return Flow.RESUME
        return Flow.KEEP
