"""The relay loop: :class:`OutboxRelay` drains the outbox table that :class:`OutboxStore` holds.

Two kinds of rows arrive (:mod:`cachesync.outbox.schema`):

* ``intent`` rows, written by the ORM hooks in the application's transaction.
  On databases without a binlog (SQLite, PostgreSQL) they are the change
  source itself: they may carry every action of a change, documents included.
* ``failed`` rows, written by :class:`~cachesync.kafka.RetryQueue` when Kafka
  was unreachable: actions the sidecar could not apply, parked durably.

The relay claims pending rows in id order (:meth:`OutboxStore.claim`, which
skips rows another relay holds, so several relays can run side by side),
applies their actions with an :class:`~cachesync.apply.Applier`, hands what
still fails to its hand-off (the Kafka retry queue), and marks the rows
``done`` in the same transaction. A row it can neither apply nor hand off stays
``pending`` with ``attempts + 1`` and ``available_at`` pushed back by
:attr:`RelayPolicy.retry <cachesync.policies.RelayPolicy>`: nothing is dropped
while Kafka or Redis are down. Only a row that cannot be decoded, or whose
failures are all permanent after ``retry.attempts`` tries with no hand-off
configured, becomes ``dead`` (kept for inspection, never deleted).

Document actions are re-read from the database before they are applied
(:mod:`cachesync.reread`), so a relayed write indexes the row as it is now. An
intent's document action may carry no position (inside the transaction the
writer cannot know it); it gets the outbox row's :class:`OutboxPosition` as its
version. Writers must insert the outbox row after their business writes (last
statement of the transaction): then two transactions that change one row hold
the row lock in the same order as their outbox ids, and versions follow commits.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .. import metrics
from ..actions import Action, DeleteKeys
from ..apply import Applier, Failure, FailureHandler
from ..changes import OutboxPosition
from ..codec import decode_action, load_json
from ..errors import (
    CacheSyncError,
    ConfigurationError,
    DecodeError,
    HandOffError,
    PermanentError,
    TransientError,
)
from ..policies import RelayPolicy
from ..reread import Refresher
from ..sinks.base import DocumentSink, KeySink
from ..sinks.elasticsearch import SearchSink
from ..sinks.redis import RedisSink
from .store import MAX_ERROR, OutboxStore, utcnow

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from ..config import Settings
    from ..registry import Registry

# OutboxStore is re-exported: code written before the store had its own module
# imports it from here (cachesync.outbox is the place to import it from).
__all__ = ["OutboxRelay", "OutboxStore", "RelayReport", "decode_row_actions"]

log = logging.getLogger("cachesync.outbox")


class Stop(Protocol):
    """What :meth:`OutboxRelay.run` waits on: a :class:`threading.Event`, or a test's fake.

    ``wait(timeout)`` is the relay's only sleep, so a fake that records the
    timeouts tests the loop's schedule without sleeping.
    """

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


def decode_row_actions(row_id: int, payload: Any) -> list[Action]:
    """The actions of one outbox row; document actions without a position get the row's.

    Total: for any *payload* (text, bytes, ``NULL``...) it returns actions that
    pass :func:`cachesync.codec.decode_action`'s checks, or raises
    :class:`DecodeError` naming the row: the row is buried alone, the relay goes on.
    """
    try:
        items = load_json(payload, f"outbox row {row_id}: payload")
    except DecodeError as exc:
        raise DecodeError(str(exc)) from None
    if not isinstance(items, list):
        raise DecodeError(f"outbox row {row_id}: payload must be a JSON array of actions")
    actions: list[Action] = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise DecodeError(f"outbox row {row_id}: action {i} is not an object")
        if item.get("type") in ("index_doc", "delete_doc") and item.get("position") is None:
            item = {**item, "position": OutboxPosition(row_id, i).encode()}
        try:
            actions.append(decode_action(item))
        except DecodeError as exc:
            raise DecodeError(f"outbox row {row_id}: action {i}: {exc}") from None
    return actions


@dataclass
class RelayReport:
    """What one :meth:`OutboxRelay.run_once` did."""

    claimed: int = 0
    done: int = 0
    deferred: int = 0
    dead: int = 0
    actions: int = 0
    handed_off: int = 0
    errors: list[str] = field(default_factory=list)


def _action_keys(action: Action) -> list[tuple[str, ...]]:
    if isinstance(action, DeleteKeys):
        return [("key", k) for k in action.keys]
    return [("doc", action.index, action.doc_id)]


class OutboxRelay:
    """Polls the outbox table and applies pending rows (see the module docstring).

    *handoff* takes actions that still fail after the applier's short retry
    (normally a Kafka-only :class:`~cachesync.kafka.RetryQueue`, built without an
    outbox fallback so a failure never moves from one outbox row to another).
    Without one, failed rows wait in the table with backoff. *refresher*
    re-reads document actions; without one they are applied as stored.
    *policy* holds every knob (:class:`~cachesync.policies.RelayPolicy`);
    *now* and *sleep* (the applier's retry waits) are injected for tests.

    Not thread-safe: run one relay per thread (several relays may share a table).
    """

    def __init__(
        self,
        store: OutboxStore,
        *,
        redis: KeySink | None,
        search: DocumentSink | None,
        handoff: FailureHandler | None = None,
        refresher: Refresher | None = None,
        policy: RelayPolicy = RelayPolicy.DEFAULT,
        now: Callable[[], dt.datetime] = utcnow,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self.handoff = handoff
        self.refresher = refresher
        self.policy = policy
        self.now = now
        self.applier = Applier(redis, search, policy=self.policy.immediate, sleep=sleep)

    @property
    def batch_size(self) -> int:
        """Rows claimed per transaction (``policy.batch_size``)."""
        return self.policy.batch_size

    @property
    def poll_interval(self) -> float:
        """Seconds between polls when idle (``policy.poll_interval``)."""
        return self.policy.poll_interval

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        registry: Registry | None = None,
        handoff: FailureHandler | None = None,
        **options: Any,
    ) -> OutboxRelay:
        """A relay on ``outbox_url`` (else ``mysql_url``) applying to the configured Redis/ES.

        Documents are re-read from ``mysql_url`` when set (the watched database),
        else from the outbox database itself (PostgreSQL/SQLite applications).
        *options* go to the constructor (``policy=``, ``now=``, ``sleep=``).
        """
        from ..connections import elasticsearch_client, redis_client, sql_engine
        from ..registry import default_registry
        from ..reread import SqlRowReader

        database = settings.require("outbox_url", "for the outbox relay", fallback="mysql_url")
        store = OutboxStore.from_url(database)
        source = settings.mysql_url or database
        engine = store.engine if source == database else sql_engine(source)
        return cls(
            store,
            redis=RedisSink(redis_client(settings), cluster=settings.redis_cluster)
            if settings.redis_url
            else None,
            search=SearchSink(elasticsearch_client(settings)) if settings.es_url else None,
            handoff=handoff,
            refresher=Refresher(SqlRowReader(engine), registry or default_registry),
            **options,
        )

    # -- one pass -------------------------------------------------------------------------

    def run_once(self) -> RelayReport:
        """Claim, apply and settle one batch of pending rows; returns what happened.

        Raises :class:`TransientError` when the outbox database is unreachable
        (the rows stay as they were).
        """
        report = RelayReport()
        now = self.now()
        with self.store.transaction("relay") as conn:
            rows = self.store.claim(conn, now, self.policy.batch_size)
            report.claimed = len(rows)
            if not rows:
                return report
            self._settle(conn, rows, now, report)
        metrics.inc("outbox_relayed_total", report.done)
        return report

    def _apply(self, batch: Sequence[Action]) -> list[Failure]:
        """Re-read and apply *batch*; every action that did not succeed, with its error.

        A :class:`TransientError` for the whole batch (the re-read's database is
        down) fails every action; any other exception is pinned on the one
        action that raises it by trying them one at a time (:meth:`_isolated`).
        A :class:`ConfigurationError` (no sink for a declared action) still
        propagates: the relay must not run half-configured.
        """
        try:
            return self._isolated(batch)
        except TransientError as exc:  # the re-read's database is down: retry every row later
            return [Failure(a, exc) for a in batch]

    def _isolated(self, batch: Sequence[Action]) -> list[Failure]:
        failures: list[Failure] = []
        try:
            to_apply: list[Action] = []
            if self.refresher is not None:
                for original, fresh in zip(batch, self.refresher.refresh(batch), strict=True):
                    if isinstance(fresh, CacheSyncError):
                        failures.append(Failure(original, fresh))
                    else:
                        to_apply.append(fresh)
            else:
                to_apply = list(batch)
            return failures + self.applier.apply(to_apply).failures
        except (TransientError, ConfigurationError):
            raise
        except Exception as exc:
            if len(batch) > 1:  # idempotent actions: applying some twice is harmless
                return [f for action in batch for f in self._isolated([action])]
            if not isinstance(exc, CacheSyncError):
                log.error("cachesync outbox: applying %r raised", batch[0], exc_info=exc)
                exc = PermanentError(f"applying raised {type(exc).__name__}: {exc}")
            return [Failure(batch[0], exc)]

    def _settle(
        self, conn: Connection, rows: Sequence[Any], now: dt.datetime, report: RelayReport
    ) -> None:
        done: list[int] = []
        dead: dict[int, str] = {}
        attempts = {int(r.id): int(r.attempts or 0) for r in rows}
        batch: list[Action] = []
        owners: dict[tuple[str, ...], set[int]] = defaultdict(set)
        for row in rows:
            row_id = int(row.id)
            try:
                actions = decode_row_actions(row_id, row.payload)
            except Exception as exc:  # DecodeError; anything else is a bug with the same cure
                dead[row_id] = str(exc)[:MAX_ERROR]
                log.error("cachesync outbox: row %d is undecodable, marked dead: %s", row_id, exc)
                continue
            for action in actions:
                for ident in _action_keys(action):
                    owners[ident].add(row_id)
            batch.extend(actions)
            done.append(row_id)
        report.actions = len(batch)

        failures = self._apply(batch)
        failed_rows: dict[int, list[Failure]] = defaultdict(list)
        if failures:
            try:
                if self.handoff is None:
                    raise HandOffError("no retry queue configured for the outbox relay")
                self.handoff.handle(failures)
                report.handed_off = len(failures)
            except HandOffError as exc:
                report.errors.append(str(exc))
                for failure in failures:
                    for ident in _action_keys(failure.action):
                        for row_id in owners.get(ident, ()):
                            failed_rows[row_id].append(failure)

        deferred: dict[int, str] = {}
        for row_id, row_failures in failed_rows.items():
            if row_id in dead:
                continue
            text = "; ".join(dict.fromkeys(str(f.error) for f in row_failures))[:MAX_ERROR]
            all_permanent = all(isinstance(f.error, PermanentError) for f in row_failures)
            if all_permanent and attempts[row_id] + 1 >= self.policy.retry.attempts:
                dead[row_id] = text
            else:
                deferred[row_id] = text
        done = [i for i in done if i not in deferred and i not in dead]
        self._mark(conn, done, deferred, dead, attempts, now)
        report.done, report.deferred, report.dead = len(done), len(deferred), len(dead)
        if deferred or dead:
            log.warning(
                "cachesync outbox: %d row(s) deferred, %d dead: %s",
                len(deferred),
                len(dead),
                "; ".join(report.errors)[:500] or next(iter({**deferred, **dead}.values())),
            )

    def _mark(
        self,
        conn: Connection,
        done: Sequence[int],
        deferred: Mapping[int, str],
        dead: Mapping[int, str],
        attempts: Mapping[int, int],
        now: dt.datetime,
    ) -> None:
        self.store.mark_done(conn, done)
        # The backoff counts from the failure, not from the claim: applying may
        # itself have waited (immediate retries, timeouts) longer than the backoff.
        failed_at = max(now, self.now()) if deferred else now
        for row_id, text in deferred.items():
            tries = attempts[row_id] + 1
            later = failed_at + dt.timedelta(seconds=self.policy.row_delay(tries))
            self.store.defer(conn, row_id, attempts=tries, until=later, error=text)
        for row_id, text in dead.items():
            self.store.bury(conn, row_id, attempts=attempts[row_id] + 1, error=text)

    # -- loop -----------------------------------------------------------------------------

    def run(self, stop: Stop) -> None:
        """Relay until *stop* is set. Database outages are logged and waited out.

        A full batch is followed at once by the next; a short one by
        ``policy.poll_interval``; an unreachable database by ``policy.outage``.
        """
        outage = self.policy.outage
        failures = 0
        while not stop.is_set():
            try:
                report = self.run_once()
                failures = 0
            except TransientError as exc:
                failures += 1
                delay = outage.delay(failures)
                log.warning("cachesync outbox relay: %s; retrying in %.1fs", exc, delay)
                stop.wait(delay)
                continue
            if report.claimed < self.policy.batch_size:
                stop.wait(self.policy.poll_interval)
