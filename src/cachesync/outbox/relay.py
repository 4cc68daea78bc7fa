"""The outbox table at work: :class:`OutboxStore` writes it, :class:`OutboxRelay` drains it.

Two kinds of rows arrive (:mod:`cachesync.outbox.schema`):

* ``intent`` rows, written by the ORM hooks in the application's transaction.
  On databases without a binlog (SQLite, PostgreSQL) they are the change
  source itself: they may carry every action of a change, documents included.
* ``failed`` rows, written by :class:`~cachesync.kafka.RetryQueue` when Kafka
  was unreachable: actions the sidecar could not apply, parked durably.

The relay claims pending rows in id order (``SELECT ... FOR UPDATE SKIP LOCKED``
where the database has it, so several relays can run side by side), applies
their actions with an :class:`~cachesync.apply.Applier`, hands what still fails
to its hand-off (the Kafka retry queue), and marks the rows ``done`` in the same
transaction. A row it can neither apply nor hand off stays ``pending`` with
``attempts + 1`` and ``available_at`` pushed back by the retry policy: nothing
is dropped while Kafka or Redis are down. Only a row that cannot be decoded, or
whose failures are all permanent after ``policy.attempts`` tries with no
hand-off configured, becomes ``dead`` (kept for inspection, never deleted).

Document actions are re-read from the database before they are applied
(:mod:`cachesync.reread`), so a relayed write indexes the row as it is now. An
intent's document action may carry no position (inside the transaction the
writer cannot know it); it gets the outbox row's :class:`OutboxPosition` as its
version. Writers must insert the outbox row after their business writes (last
statement of the transaction): then two transactions that change one row hold
the row lock in the same order as their outbox ids, and versions follow commits.

Everything is SQLAlchemy Core on lightweight table constructs, so the same
relay runs on MySQL/MariaDB, PostgreSQL and SQLite.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import metrics
from ..actions import Action, DeleteKeys
from ..apply import Applier, Failure, FailureHandler
from ..changes import OutboxPosition
from ..codec import decode_action, encode_actions
from ..errors import CacheSyncError, DecodeError, HandOffError, PermanentError, TransientError
from ..policies import ImmediateRetryPolicy, RetryPolicy
from ..reread import Refresher, translate_db_error
from ..sinks.elasticsearch import SearchSink
from ..sinks.redis import RedisSink
from .schema import (
    KIND_FAILED,
    KIND_INTENT,
    OUTBOX_TABLE,
    STATE_DEAD,
    STATE_DONE,
    STATE_PENDING,
    create_table_sql,
)

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.engine import Connection, Engine

    from ..config import Settings
    from ..registry import Registry

__all__ = ["OutboxRelay", "OutboxStore", "RelayReport", "decode_row_actions"]

log = logging.getLogger("cachesync.outbox")

#: ``last_error`` is cut to this many characters.
_MAX_ERROR = 4000


def _utcnow() -> dt.datetime:
    """Naive UTC: the outbox's DATETIME columns carry no zone on MySQL or SQLite."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _ddl_dialect(engine: Engine) -> str:
    name = engine.dialect.name
    return "mysql" if name in ("mysql", "mariadb") else name


class OutboxStore:
    """The outbox table on one database: add rows, count them, create the table.

    Every method runs in its own transaction and commits before it returns, so
    a successful :meth:`add` is durable: that is what lets the retry queue tell
    the sidecar an action is safely stored.
    """

    def __init__(self, engine: Engine, table: str = OUTBOX_TABLE) -> None:
        import sqlalchemy as sa

        self.engine = engine
        self.name = table
        self.table: sa.Table = sa.Table(
            table,
            sa.MetaData(),
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("created_at", sa.DateTime),
            sa.Column("kind", sa.String(16)),
            sa.Column("state", sa.String(16)),
            sa.Column("payload", sa.Text),
            sa.Column("attempts", sa.Integer),
            sa.Column("available_at", sa.DateTime),
            sa.Column("last_error", sa.Text),
        )

    @classmethod
    def from_url(cls, url: str, *, table: str = OUTBOX_TABLE, timeout: float = 5.0) -> OutboxStore:
        """A store on the database at *url* (``mysql://``, ``postgresql://``, ``sqlite:///``)."""
        from ..connections import sql_engine

        return cls(sql_engine(url, timeout=timeout), table)

    def _db(self, what: str) -> contextlib.AbstractContextManager[None]:
        """Context for translating database errors raised while doing *what*."""
        return _db_errors(f"outbox {self.name}: {what}")

    def create_table(self) -> None:
        """``CREATE TABLE IF NOT EXISTS`` in this database's dialect (tests, first start)."""
        import sqlalchemy as sa

        with self._db("create table"), self.engine.begin() as conn:
            conn.execute(sa.text(create_table_sql(self.name, _ddl_dialect(self.engine))))

    def add(
        self,
        kind: str,
        actions: Sequence[Action],
        *,
        attempts: int = 0,
        last_error: str | None = None,
    ) -> int:
        """Insert one pending row holding *actions* and commit; returns its id.

        Raises :class:`TransientError` when the database cannot take it.
        """
        if kind not in (KIND_INTENT, KIND_FAILED):
            raise ValueError(f"outbox kind must be {KIND_INTENT!r} or {KIND_FAILED!r}")
        values: dict[str, Any] = {
            "created_at": _utcnow(),
            "kind": kind,
            "state": STATE_PENDING,
            "payload": encode_actions(actions),
            "attempts": attempts,
            "available_at": None,
            "last_error": last_error[:_MAX_ERROR] if last_error else None,
        }
        with self._db("insert"), self.engine.begin() as conn:
            result = conn.execute(self.table.insert().values(**values))
            key = result.inserted_primary_key
            return int(key[0]) if key and key[0] is not None else 0

    def counts(self) -> dict[str, int]:
        """Rows per state, e.g. ``{"pending": 3, "done": 120, "dead": 0}``."""
        import sqlalchemy as sa

        t = self.table
        with self._db("count"), self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.c.state, sa.func.count()).group_by(t.c.state)).all()
        found = {str(state): int(n) for state, n in rows}
        return {state: found.get(state, 0) for state in (STATE_PENDING, STATE_DONE, STATE_DEAD)}

    def rows(self, state: str | None = None) -> list[dict[str, Any]]:
        """Every row (optionally of one *state*) in id order; for tests and ``status``."""
        import sqlalchemy as sa

        query = sa.select(self.table).order_by(self.table.c.id)
        if state is not None:
            query = query.where(self.table.c.state == state)
        with self._db("read"), self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]


@contextlib.contextmanager
def _db_errors(what: str) -> Iterator[None]:
    """Translate SQLAlchemy errors raised inside the block into cachesync errors."""
    from sqlalchemy import exc as sa_exc

    try:
        yield
    except sa_exc.SQLAlchemyError as exc:
        raise translate_db_error(exc, what) from exc


def decode_row_actions(row_id: int, payload: str | bytes) -> list[Action]:
    """The actions of one outbox row; document actions without a position get the row's."""
    try:
        items = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"outbox row {row_id}: payload is not JSON: {exc}") from None
    if not isinstance(items, list):
        raise DecodeError(f"outbox row {row_id}: payload must be a JSON array of actions")
    actions: list[Action] = []
    for i, item in enumerate(items):
        if (
            isinstance(item, dict)
            and item.get("type") in ("index_doc", "delete_doc")
            and item.get("position") is None
        ):
            item = {**item, "position": OutboxPosition(row_id, i).encode()}
        if not isinstance(item, Mapping):
            raise DecodeError(f"outbox row {row_id}: action {i} is not an object")
        actions.append(decode_action(item))
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

    Not thread-safe: run one relay per thread (several relays may share a table).
    """

    def __init__(
        self,
        store: OutboxStore,
        *,
        redis: RedisSink | None,
        search: SearchSink | None,
        handoff: FailureHandler | None = None,
        refresher: Refresher | None = None,
        batch_size: int = 200,
        poll_interval: float = 0.5,
        policy: RetryPolicy = RetryPolicy.DEFAULT,
        immediate: ImmediateRetryPolicy = ImmediateRetryPolicy.DEFAULT,
        now: Callable[[], dt.datetime] = _utcnow,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if batch_size <= 0 or poll_interval <= 0:
            raise ValueError("batch_size and poll_interval must be > 0")
        self.store = store
        self.handoff = handoff
        self.refresher = refresher
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.policy = policy
        self.now = now
        self.applier = Applier(redis, search, policy=immediate, sleep=sleep)
        self._skip_locked: bool | None = None

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
            redis=RedisSink(redis_client(settings), cluster=settings.redis_cluster),
            search=SearchSink(elasticsearch_client(settings)) if settings.es_url else None,
            handoff=handoff,
            refresher=Refresher(SqlRowReader(engine), registry or default_registry),
            **options,
        )

    # -- claiming -------------------------------------------------------------------------

    def _supports_skip_locked(self, conn: Connection) -> bool:
        if self._skip_locked is None:
            dialect = conn.dialect
            version = tuple(getattr(dialect, "server_version_info", None) or ())
            if dialect.name == "postgresql":
                self._skip_locked = version >= (9, 5)
            elif dialect.name in ("mysql", "mariadb"):
                mariadb = bool(getattr(dialect, "is_mariadb", False))
                self._skip_locked = version >= ((10, 6) if mariadb else (8, 0, 1))
            else:
                self._skip_locked = False  # SQLite: one writer at a time anyway
        return self._skip_locked

    def _claim(self, conn: Connection, now: dt.datetime) -> list[Any]:
        import sqlalchemy as sa

        t = self.store.table
        query = (
            sa.select(t.c.id, t.c.kind, t.c.payload, t.c.attempts)
            .where(t.c.state == STATE_PENDING)
            .where(sa.or_(t.c.available_at.is_(None), t.c.available_at <= now))
            .order_by(t.c.id)
            .limit(self.batch_size)
        )
        if conn.dialect.name != "sqlite":
            query = query.with_for_update(skip_locked=self._supports_skip_locked(conn))
        return list(conn.execute(query).all())

    # -- one pass -------------------------------------------------------------------------

    def run_once(self) -> RelayReport:
        """Claim, apply and settle one batch of pending rows; returns what happened.

        Raises :class:`TransientError` when the outbox database is unreachable
        (the rows stay as they were).
        """
        report = RelayReport()
        now = self.now()
        with self.store._db("relay"), self.store.engine.begin() as conn:
            rows = self._claim(conn, now)
            report.claimed = len(rows)
            if not rows:
                return report
            self._settle(conn, rows, now, report)
        metrics.inc("outbox_relayed_total", report.done)
        return report

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
            except DecodeError as exc:
                dead[row_id] = str(exc)
                log.error("cachesync outbox: row %d is undecodable, marked dead: %s", row_id, exc)
                continue
            for action in actions:
                for ident in _action_keys(action):
                    owners[ident].add(row_id)
            batch.extend(actions)
            done.append(row_id)
        report.actions = len(batch)

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
                to_apply = batch
            failures += self.applier.apply(to_apply).failures
        except TransientError as exc:  # the re-read's database is down: retry every row later
            failures = [Failure(a, exc) for a in batch]

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
            text = "; ".join(dict.fromkeys(str(f.error) for f in row_failures))[:_MAX_ERROR]
            all_permanent = all(isinstance(f.error, PermanentError) for f in row_failures)
            if all_permanent and attempts[row_id] + 1 >= self.policy.attempts:
                dead[row_id] = text
            else:
                deferred[row_id] = text
        done = [i for i in done if i not in deferred and i not in dead]
        self._update(conn, done, deferred, dead, attempts, now)
        report.done, report.deferred, report.dead = len(done), len(deferred), len(dead)
        if deferred or dead:
            log.warning(
                "cachesync outbox: %d row(s) deferred, %d dead: %s",
                len(deferred),
                len(dead),
                "; ".join(report.errors)[:500] or next(iter({**deferred, **dead}.values())),
            )

    def _update(
        self,
        conn: Connection,
        done: Sequence[int],
        deferred: Mapping[int, str],
        dead: Mapping[int, str],
        attempts: Mapping[int, int],
        now: dt.datetime,
    ) -> None:
        t = self.store.table
        if done:
            conn.execute(t.update().where(t.c.id.in_(done)).values(state=STATE_DONE))
        # The backoff counts from the failure, not from the claim: applying may
        # itself have waited (immediate retries, timeouts) longer than the backoff.
        failed_at = max(now, self.now()) if deferred else now
        for row_id, text in deferred.items():
            tries = attempts[row_id] + 1
            later = failed_at + dt.timedelta(seconds=self.policy.backoff(tries))
            conn.execute(
                t.update()
                .where(t.c.id == row_id)
                .values(attempts=tries, available_at=later, last_error=text)
            )
        for row_id, text in dead.items():
            conn.execute(
                t.update()
                .where(t.c.id == row_id)
                .values(state=STATE_DEAD, attempts=attempts[row_id] + 1, last_error=text)
            )

    # -- loop -----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Relay until *stop* is set. Database outages are logged and waited out."""
        failures = 0
        while not stop.is_set():
            try:
                report = self.run_once()
                failures = 0
            except TransientError as exc:
                failures += 1
                delay = min(self.policy.max_backoff, self.poll_interval * 2 ** min(failures, 6))
                log.warning("cachesync outbox relay: %s; retrying in %.1fs", exc, delay)
                stop.wait(delay)
                continue
            if report.claimed < self.batch_size:
                stop.wait(self.poll_interval)
