"""The outbox table on one database: :class:`OutboxStore` parks, claims and marks rows.

The store does I/O and nothing else: it never decodes a payload or decides
what a failure means. That is :class:`~cachesync.outbox.relay.OutboxRelay`'s
job, which claims a batch inside a transaction of its own
(:meth:`OutboxStore.transaction`), settles it with :meth:`~OutboxStore.mark_done`,
:meth:`~OutboxStore.defer` and :meth:`~OutboxStore.bury`, and commits once.

Claiming uses ``SELECT ... FOR UPDATE SKIP LOCKED`` where the database has it
(MariaDB 10.6+, MySQL 8.0.1+, PostgreSQL 9.5+), so several relays can share a
table without taking the same row twice; elsewhere plain ``FOR UPDATE`` (one
relay waits for the other), and nothing on SQLite, which has one writer anyway.

Everything is SQLAlchemy Core on :func:`cachesync.outbox.table.outbox_table`,
imported on first use so that ``import cachesync.outbox`` needs no SQLAlchemy.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..actions import Action
from ..codec import encode_actions
from ..reread import translate_db_error
from . import schema

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.engine import Connection, Engine

__all__ = ["MAX_ERROR", "OutboxStore", "utcnow"]

#: ``last_error`` is cut to this many characters.
MAX_ERROR = 4000


def utcnow() -> dt.datetime:
    """Naive UTC: the outbox's DATETIME columns carry no zone on MySQL or SQLite."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _ddl_dialect(engine: Engine) -> str:
    name = engine.dialect.name
    return "mysql" if name in ("mysql", "mariadb") else name


@contextlib.contextmanager
def _db_errors(what: str) -> Iterator[None]:
    """Translate SQLAlchemy errors raised inside the block into cachesync errors."""
    from sqlalchemy import exc as sa_exc

    try:
        yield
    except sa_exc.SQLAlchemyError as exc:
        raise translate_db_error(exc, what) from exc


class OutboxStore:
    """The outbox table on one database (see the module docstring).

    :meth:`add`, :meth:`counts`, :meth:`rows` and :meth:`create_table` each run
    in their own transaction and commit before they return, so a successful
    :meth:`add` is durable: that is what lets the retry queue tell the sidecar an
    action is safely parked. :meth:`claim` and the marking methods run on the
    caller's connection and commit with it. Every database error comes out as
    a :mod:`cachesync.errors` error (:class:`~cachesync.errors.TransientError`
    when the database is unreachable).
    """

    def __init__(self, engine: Engine, table: str = schema.OUTBOX_TABLE) -> None:
        import sqlalchemy as sa

        from .table import outbox_table

        self.engine = engine
        self.name = table
        self.table: sa.Table = outbox_table(sa.MetaData(), table)
        self._skip_locked: bool | None = None

    @classmethod
    def from_url(
        cls, url: str, *, table: str = schema.OUTBOX_TABLE, timeout: float = 5.0
    ) -> OutboxStore:
        """A store on the database at *url* (``mysql://``, ``postgresql://``, ``sqlite:///``)."""
        from ..connections import sql_engine

        return cls(sql_engine(url, timeout=timeout), table)

    @contextlib.contextmanager
    def transaction(self, what: str) -> Iterator[Connection]:
        """A connection in a transaction that commits when the block ends without error.

        Errors raised inside, the database's or the block's own SQLAlchemy errors,
        roll back and come out translated, naming this table and *what*.
        """
        with _db_errors(f"outbox {self.name}: {what}"), self.engine.begin() as conn:
            yield conn

    def create_table(self) -> None:
        """``CREATE TABLE IF NOT EXISTS`` in this database's dialect (tests, first start)."""
        import sqlalchemy as sa

        from .schema import create_table_sql

        with self.transaction("create table") as conn:
            conn.execute(sa.text(create_table_sql(self.name, _ddl_dialect(self.engine))))

    # -- parking ---------------------------------------------------------------------------

    def add(
        self,
        kind: str,
        actions: Sequence[Action],
        *,
        attempts: int = 0,
        last_error: str | None = None,
        state: str = schema.STATE_PENDING,
        conn: Connection | None = None,
    ) -> int:
        """Insert one row holding *actions* (pending unless *state* says ``dead``); its id.

        In a transaction of its own that commits before this returns, or on the
        caller's *conn* (committing with it). Raises :class:`TransientError` when
        the database cannot take it.
        """
        if kind not in (schema.KIND_INTENT, schema.KIND_FAILED):
            raise ValueError(
                f"outbox kind must be {schema.KIND_INTENT!r} or {schema.KIND_FAILED!r}"
            )
        values = self._values(kind, encode_actions(actions), state, attempts, last_error, utcnow())
        if conn is None:
            with self.transaction("insert") as own:
                return self._insert(own, values)
        return self._insert(conn, values)

    def _insert(self, conn: Connection, values: dict[str, Any]) -> int:
        result = conn.execute(self.table.insert().values(**values))
        key = result.inserted_primary_key
        return int(key[0]) if key and key[0] is not None else 0

    def add_dead_changes(self, letters: Sequence[tuple[str, str]]) -> None:
        """Insert one ``dead`` row of kind ``change`` per ``(payload, error)`` in one transaction."""
        if not letters:
            return
        now = utcnow()
        rows = [
            self._values(schema.KIND_CHANGE, payload, schema.STATE_DEAD, 0, error, now)
            for payload, error in letters
        ]
        with self.transaction("insert dead letters") as conn:
            conn.execute(self.table.insert(), rows)

    def _values(
        self,
        kind: str,
        payload: str,
        state: str,
        attempts: int,
        error: str | None,
        now: dt.datetime,
    ) -> dict[str, Any]:
        return {
            "created_at": now,
            "kind": kind,
            "state": state,
            "payload": payload,
            "attempts": attempts,
            "available_at": None,
            "last_error": error[:MAX_ERROR] if error else None,
        }

    def revive(self, conn: Connection, row_id: int) -> None:
        """Make dead row *row_id* pending again with no attempts (a redrive)."""
        t = self.table
        conn.execute(
            t.update()
            .where(t.c.id == row_id)
            .values(state=schema.STATE_PENDING, attempts=0, available_at=None)
        )

    # -- reading ---------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Rows per state, e.g. ``{"pending": 3, "done": 120, "dead": 0}``."""
        import sqlalchemy as sa

        t = self.table
        with _db_errors(f"outbox {self.name}: count"), self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.c.state, sa.func.count()).group_by(t.c.state)).all()
        found = {str(state): int(n) for state, n in rows}
        return {
            state: found.get(state, 0)
            for state in (schema.STATE_PENDING, schema.STATE_DONE, schema.STATE_DEAD)
        }

    def rows(self, state: str | None = None) -> list[dict[str, Any]]:
        """Every row (optionally of one *state*) in id order; for tests and ``status``."""
        import sqlalchemy as sa

        query = sa.select(self.table).order_by(self.table.c.id)
        if state is not None:
            query = query.where(self.table.c.state == state)
        with _db_errors(f"outbox {self.name}: read"), self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    # -- claiming and marking (on the caller's transaction) --------------------------------

    def supports_skip_locked(self, conn: Connection) -> bool:
        """Whether this database can ``SKIP LOCKED`` (asked once, then remembered)."""
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

    def claim(self, conn: Connection, now: dt.datetime, limit: int) -> list[Any]:
        """Lock up to *limit* pending rows that are due at *now*, in id order.

        Rows have ``id``, ``kind``, ``payload`` and ``attempts``. The locks last
        until *conn*'s transaction ends; rows another relay holds are skipped
        where the database can (:meth:`supports_skip_locked`), waited for elsewhere.
        """
        import sqlalchemy as sa

        t = self.table
        query = (
            sa.select(t.c.id, t.c.kind, t.c.payload, t.c.attempts)
            .where(t.c.state == schema.STATE_PENDING)
            .where(sa.or_(t.c.available_at.is_(None), t.c.available_at <= now))
            .order_by(t.c.id)
            .limit(limit)
        )
        if conn.dialect.name != "sqlite":
            query = query.with_for_update(skip_locked=self.supports_skip_locked(conn))
        return list(conn.execute(query).all())

    def mark_done(self, conn: Connection, ids: Sequence[int]) -> None:
        """Mark the rows *ids* ``done`` (kept, never deleted: ``status`` counts them)."""
        t = self.table
        if ids:
            conn.execute(t.update().where(t.c.id.in_(ids)).values(state=schema.STATE_DONE))

    def defer(
        self, conn: Connection, row_id: int, *, attempts: int, until: dt.datetime, error: str
    ) -> None:
        """Leave row *row_id* pending, not to be claimed before *until*, with its *error*."""
        t = self.table
        conn.execute(
            t.update()
            .where(t.c.id == row_id)
            .values(attempts=attempts, available_at=until, last_error=error)
        )

    def bury(self, conn: Connection, row_id: int, *, attempts: int, error: str) -> None:
        """Mark row *row_id* ``dead``: never claimed again, kept for inspection."""
        t = self.table
        conn.execute(
            t.update()
            .where(t.c.id == row_id)
            .values(state=schema.STATE_DEAD, attempts=attempts, last_error=error)
        )
