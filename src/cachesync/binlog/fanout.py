"""Related-row fan-out: a change of a related row re-renders the rows that embed it.

A model declaring ``related=`` document fields or ``depends_on=`` keys
(:mod:`cachesync.related`) embeds rows of other tables. The binlog shows the
change of the related row (a category renamed by the ORM, a bulk statement or
another service's raw SQL) but no change of the products that embed it; for
each batch :meth:`Fanout.plan` does two things:

1. **Own changes, joined.** :func:`~cachesync.planning.plan` renders a
   document from the changed row's image alone, which has no related values.
   Every such document action is re-read as the CURRENT joined row
   (:class:`~cachesync.reread.Refresher` over the joined ``SELECT``), keeping
   the change's own position as its version. A product moved to another
   category is re-rendered with the new one.
2. **Fan-out.** For a change of a related table that touches a column the
   declaration reads (the join columns, the related fields; any column for
   ``depends_on``), the rows that reference the old and the new value are
   found through the foreign key with keyset chunks
   (``WHERE fk = ? AND pk > ? ORDER BY pk LIMIT chunk``, one indexed range
   scan each; the index is checked at start-up), read joined in the same
   query, and planned: their dependent keys deleted, their documents indexed
   from the current joined data (or deleted, when ``when`` no longer holds).

Versions. A fan-out document carries the position of the RELATED row's change
as its external version. Its content is read after that change committed, so
it is right at that version; a later change of the product carries a higher
position and wins, and a fan-out that read data after such a change wrote the
right data anyway (it loses the version race with a 409, which counts as done).
A late retry of a fan-out re-reads the row (:mod:`cachesync.reread`) and cannot
overwrite a newer write: its version is older.

Bounded. Chunks of :attr:`chunk` rows are handed to the lanes as they are
read (*flush*), which block while the lanes' queues are full, so memory is
bounded by the lane queues, not by the fan-out. The chunks are submitted
under the resume point of the previous batch, so the checkpoint cannot pass
the related change before its whole fan-out is applied: a SIGKILL in the
middle replays the batch and the fan-out starts again (idempotent: deletes,
and versioned writes of current data). What this does NOT do yet: interleave
a large fan-out with the stream; the reading thread works through it, so other
tables' changes wait for its duration (README, "Related data").
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from ..actions import Action, DeleteDoc, DeleteKeys, DocumentAction, IndexDoc, RowRef
from ..changes import Position, RowChange
from ..errors import CacheSyncError, DeclarationError
from ..registry import Registry, TableSpec
from ..related import Relations, joined_select, relations_of
from ..reread import Refresher, SqlRowReader, translate_db_error
from . import server
from .checkpoint import ResumePoint
from .lanes import Lanes

__all__ = ["Fanout"]

log = logging.getLogger("cachesync.fanout")

#: Rows per keyset chunk of a fan-out (one indexed range scan and one lane hand-off each).
DEFAULT_CHUNK = 1000

#: Fan-out chunks in the lanes at once. Few, so a fan-out never fills a lane's queue:
#: a full queue behind a long apply is what the lanes take for a frozen sink.
WINDOW = 4


class _Window:
    """Counts fan-out chunks handed to the lanes and not applied yet (thread-safe)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.open = 0

    def opened(self, lanes: int) -> Callable[[str], None]:
        """Count one chunk for *lanes* lanes; the callback the lanes call when each is done."""
        left = [lanes]
        with self._cond:
            self.open += 1

        def done(_lane: str) -> None:
            with self._cond:
                left[0] -= 1
                if left[0] == 0:
                    self.open = max(0, self.open - 1)
                    self._cond.notify_all()

        return done

    def wait(self, seconds: float) -> None:
        with self._cond:
            self._cond.wait(seconds)

    def reset(self) -> None:
        with self._cond:
            self.open = 0


class Fanout:
    """Plans what related-row changes do to the rows that embed them (module docstring).

    Built by :meth:`start` when the sidecar starts leading; ``None`` from there
    when no model declares related data. :meth:`plan` raises
    :class:`~cachesync.errors.TransientError` when the database cannot be
    reached (the sidecar retries the batch from its checkpoint).
    """

    def __init__(
        self,
        mysql: Mapping[str, Any],
        registry: Registry,
        related: Sequence[tuple[TableSpec, Relations]],
        *,
        default_schema: str | None,
        chunk: int = DEFAULT_CHUNK,
    ) -> None:
        self._mysql = dict(mysql)
        self.registry = registry
        self.related = list(related)
        self._default = default_schema
        self.chunk = chunk
        self._engine: Any = None
        self.fanned_out = 0  #: rows re-planned by fan-outs so far (tests, logs)
        self._window = _Window()

    @classmethod
    def start(
        cls,
        conn: Any,
        mysql: Mapping[str, Any],
        registry: Registry,
        *,
        default_schema: str | None,
        chunk: int = DEFAULT_CHUNK,
    ) -> Fanout | None:
        """Resolve every declared relation and check its foreign-key index over *conn*.

        Raises :class:`DeclarationError` naming the model for a relation that
        cannot be followed or a foreign key without an index (a fan-out would
        scan the whole table once per related change).
        """
        related = [(s, r) for s in registry.tables() if (r := relations_of(s)) is not None]
        if not related:
            return None
        for spec, relations in related:
            _check_indexes(conn, spec, relations, default_schema)
            log.info(
                "cachesync: %s embeds %s",
                spec.model,
                ", ".join(sorted({h.table for h in relations.hops.values()})),
            )
        return cls(mysql, registry, related, default_schema=default_schema, chunk=chunk)

    def source_registry(self, watched: Registry) -> Registry:
        """*watched* plus the related tables it does not stream yet (:meth:`parents`)."""
        extra = self.parents(watched)
        if not extra:
            return watched
        registry = Registry()
        for spec in [*watched.tables(), *extra]:
            registry.add(spec)
        return registry

    def parents(self, watched: Registry) -> list[TableSpec]:
        """Specs (no keys, no projections) of related tables *watched* does not stream yet."""
        out: dict[tuple[str | None, str], TableSpec] = {}
        for spec, relations in self.related:
            for hop in relations.hops.values():
                schema = hop.schema or spec.schema
                if watched.get(schema, hop.table) is not None or (schema, hop.table) in out:
                    continue
                columns = {c: c for c in hop.columns.values()}
                out[(schema, hop.table)] = TableSpec(
                    model=f"<related to {spec.model}>",
                    schema=schema,
                    table=hop.table,
                    columns=columns,
                    primary_key=hop.remote,
                    key_templates=(),
                    projections=(),
                )
        return list(out.values())

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    # -- planning -----------------------------------------------------------------------------

    def plan(
        self,
        batch: Sequence[RowChange],
        actions: list[Action],
        lanes: Lanes | None,
        point: ResumePoint | None,
        stopped: threading.Event,
        keepalive: Callable[[], object],
    ) -> list[Action] | None:
        """*actions* with own documents re-read joined, plus the fan-out of *batch*.

        Chunks of a large fan-out go to *lanes* as they are read, under *point*
        (the previous batch's), at most :data:`WINDOW` at once; the rest is
        returned. ``None`` when the sidecar stopped meanwhile (*stopped*).
        *keepalive* is called while waiting (the leader lock's ping).
        """

        def flush(chunk: list[Action], rows: int) -> bool:
            if lanes is None or point is None:  # not streaming (tests): one list
                held.extend(chunk)
                return True
            while self._window.open >= WINDOW:
                if not lanes.ledger.owing():
                    self._window.reset()  # work settled without its callback (a bypass)
                    break
                if stopped.is_set():
                    return False
                self._window.wait(0.05)
                keepalive()
            kinds = {Lanes.KEYS if isinstance(a, DeleteKeys) else Lanes.DOCUMENTS for a in chunk}
            # The rows count as changes, so the lanes merge their usual rows into one apply.
            return lanes.submit(chunk, point, rows, done=self._window.opened(len(kinds)))

        held: list[Action] = []
        out = self._joined(actions)
        pending: list[Action] = []
        rows = 0
        for change in batch:
            for spec, relations in self.related:
                for prefix, columns in relations.triggers(
                    change.schema, change.table, self._default
                ):
                    if _untouched(change, columns):
                        continue
                    hop = relations.hops[prefix]
                    for value in _values(change, hop.remote):
                        for n, chunk in self._affected(
                            spec, relations, prefix, value, change.position
                        ):
                            pending += chunk
                            rows += n
                            if rows >= self.chunk:
                                if not flush(pending, rows):
                                    return None
                                pending, rows = [], 0
        return out + held + pending

    def _joined(self, actions: list[Action]) -> list[Action]:
        """Document actions of models with related fields, re-read as their current joined row."""
        wanted = [
            i
            for i, a in enumerate(actions)
            if not isinstance(a, DeleteKeys) and a.source is not None and self._embeds(a.source)
        ]
        if not wanted:
            return actions
        refreshed = Refresher(SqlRowReader(self._db()), self.registry).refresh(
            [actions[i] for i in wanted]
        )
        out = list(actions)
        for i, result in zip(wanted, refreshed, strict=True):
            if isinstance(result, CacheSyncError):
                # A table gone or a user callable failing on the joined row: keep the bare
                # rendering (related fields empty) and say so; `verify` reports the document.
                log.error("cachesync: joined re-read failed, related fields left empty: %s", result)
                continue
            out[i] = result
        return out

    def _embeds(self, ref: RowRef) -> bool:
        spec = self.registry.get(ref.schema, ref.table)
        return spec is not None and bool(spec.related)

    def _affected(
        self,
        spec: TableSpec,
        relations: Relations,
        prefix: tuple[str, ...],
        value: tuple[Any, ...],
        position: Position | None,
    ) -> Iterator[tuple[int, list[Action]]]:
        """``(rows, actions)`` chunks for the rows of *spec* whose relation *prefix* ends at *value*."""
        import sqlalchemy as sa

        select, t0, joined = joined_select(spec, spec.schema or self._default)
        hop = relations.hops[prefix]
        previous = t0 if len(prefix) == 1 else joined[prefix[:-1]]
        match = sa.and_(*(previous.c[c] == v for c, v in zip(hop.local, value, strict=True)))
        pk = spec.primary_key_columns()
        keys = [t0.c[c] for c in pk]
        dependent = relations.dependent.get(prefix, ())
        documents = bool(spec.projections) and (
            prefix in relations.dependent
            or any(p[: len(prefix)] == prefix for p, _ in relations.fields.values())
        )
        last: tuple[Any, ...] | None = None
        while True:
            where = match
            if last is not None:
                after = keys[0] > last[0] if len(keys) == 1 else sa.tuple_(*keys) > sa.tuple_(*last)
                where = sa.and_(match, after)
            stmt = select.where(where).order_by(*keys).limit(self.chunk)
            try:
                with self._db().connect() as conn:
                    rows = [dict(r) for r in conn.execute(stmt).mappings()]
            except sa.exc.SQLAlchemyError as exc:
                raise translate_db_error(exc, f"fan-out into {spec.table}") from exc
            if not rows:
                return
            self.fanned_out += len(rows)
            yield len(rows), self._chunk(spec, rows, dependent, documents, position)
            if len(rows) < self.chunk:
                return
            last = tuple(rows[-1][c] for c in pk)

    @staticmethod
    def _chunk(
        spec: TableSpec,
        images: list[dict[str, Any]],
        dependent: Sequence[Any],
        documents: bool,
        position: Position | None,
    ) -> list[Action]:
        keys: dict[str, None] = {}
        docs: list[DocumentAction] = []
        for image in images:
            row = spec.row_from_columns(image)
            for template in dependent:
                key = template.render(row)
                if key is not None:
                    keys[key] = None
            if not documents or position is None:
                continue
            ref = spec.row_ref(image)
            for projection in spec.projections:
                doc_id = projection.doc_id(row)
                if doc_id is None:
                    continue
                if projection.matches(row):
                    docs.append(
                        IndexDoc(projection.index, doc_id, projection.document(row), position, ref)
                    )
                else:
                    docs.append(DeleteDoc(projection.index, doc_id, position, ref))
        out: list[Action] = [DeleteKeys(tuple(keys), position)] if keys else []
        return out + list(docs)

    def _db(self) -> Any:
        if self._engine is None:
            import pymysql
            import sqlalchemy as sa

            params = self._mysql
            self._engine = sa.create_engine(
                "mysql+pymysql://",
                creator=lambda: pymysql.connect(
                    **params, connect_timeout=5, read_timeout=60, charset="utf8mb4"
                ),
                pool_pre_ping=True,
                pool_size=1,
            )
        return self._engine


def _untouched(change: RowChange, columns: frozenset[str] | None) -> bool:
    """An update that changes none of *columns* (``None``: any column counts)."""
    if change.before is None or change.after is None:
        return False
    before, after = change.before, change.after
    names = columns if columns is not None else set(before) | set(after)
    return all(before.get(c) == after.get(c) for c in names)


def _values(change: RowChange, columns: Sequence[str]) -> list[tuple[Any, ...]]:
    """The referenced values of the changed row, before and after, once each, no NULLs."""
    out: dict[tuple[Any, ...], None] = {}
    for image in (change.before, change.after):
        if image is None:
            continue
        value = tuple(image.get(c) for c in columns)
        if None not in value:
            out[value] = None
    return list(out)


def _check_indexes(
    conn: Any, spec: TableSpec, relations: Relations, default_schema: str | None
) -> None:
    """Every hop's foreign-key columns lead some index of the referencing table."""
    for prefix, hop in relations.hops.items():
        if len(prefix) == 1:
            schema, table = spec.schema or default_schema, spec.table
        else:
            parent = relations.hops[prefix[:-1]]
            schema, table = parent.schema or spec.schema or default_schema, parent.table
        with server.translate_errors(f"reading the indexes of {table}"), conn.cursor() as cur:
            cur.execute(
                "SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS "
                "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY INDEX_NAME, SEQ_IN_INDEX",
                (schema, table),
            )
            indexes: dict[str, list[str]] = {}
            for name, column in cur.fetchall():
                indexes.setdefault(str(name), []).append(str(column).lower())
        wanted = {c.lower() for c in hop.local}
        if not any(set(cols[: len(wanted)]) == wanted for cols in indexes.values()):
            raise DeclarationError(
                f"{spec.model}: relation {'.'.join(prefix)!r}: {schema}.{table} has no index "
                f"on ({', '.join(hop.local)}); each change of a {hop.model} row would scan the "
                f"table. Add one (CREATE INDEX ... ON {table} ({', '.join(hop.local)}))",
                model=spec.model,
            )
