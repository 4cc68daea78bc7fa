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

Bounded, and interleaved with the stream. The first chunk of each fan-out is
read on the reading thread and planned with the batch (most fan-outs are one
chunk: a category with a few hundred products), at most :attr:`chunk` rows per
batch. A fan-out that fills its first chunk, or that finds the batch's budget
spent, becomes a :class:`~cachesync.binlog.fanjobs.FanoutJob`: the relation, the
related value, the related change's position and the primary key it has reached.
The job is saved next to the checkpoint before the checkpoint passes the change
that made it, and a worker thread works through it chunk by chunk as background
work of the lanes (which take stream work first), saving its progress as chunks
are applied. A SIGKILL in the middle resumes it from its last saved chunk.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..actions import Action, DeleteDoc, DeleteKeys, IndexDoc, RowRef
from ..changes import Op, RowChange
from ..deadletters import PoisonChange, is_poison
from ..errors import CacheSyncError, DeclarationError
from ..registry import Registry, TableSpec
from ..related import Relations, joined_reads, relations_of
from ..reread import Refresher, SqlRowReader, translate_db_error
from ..sqltypes import ColumnType
from . import server
from .fanjobs import FanoutJob

__all__ = ["FannedOut", "Fanout", "FanoutChunk", "plan_chunk"]

log = logging.getLogger("cachesync.fanout")

#: Rows per keyset chunk of a fan-out (one indexed range scan and one lane hand-off each).
DEFAULT_CHUNK = 1000


#: The most fan-out lookups made on the reading thread per batch (a bulk UPDATE of
#: thousands of related rows leaves the rest to the worker instead of holding the stream).
INLINE_LOOKUPS = 64


@dataclass
class FanoutChunk:
    """One chunk of a fan-out, planned: its actions and dead letters, and where it ended."""

    rows: int
    final: bool  #: fewer rows than asked for: the fan-out is done
    last: tuple[Any, ...] | None  #: the primary key of its last row (the job's next ``after``)
    actions: list[Action] = field(default_factory=list)
    poison: list[PoisonChange] = field(default_factory=list)
    keys: dict[str, None] = field(default_factory=dict)


@dataclass
class FannedOut:
    """What :meth:`Fanout.plan` made of a batch."""

    actions: list[Action]
    poison: list[PoisonChange] = field(default_factory=list)
    #: fan-outs left for the worker (binlog/fanjobs.py)
    jobs: list[FanoutJob] = field(default_factory=list)


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
        #: the joined reads' column types per spec, kept until the next DDL (:meth:`schema_changed`)
        self._types: dict[int, Mapping[str, ColumnType]] = {}

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

    def plan(self, batch: Sequence[RowChange], actions: list[Action]) -> FannedOut:
        """*actions* with own documents re-read joined, plus the fan-out of *batch*.

        The first chunk of each fan-out is planned here, up to :attr:`chunk` rows
        and :data:`INLINE_LOOKUPS` lookups for the whole batch; what is left
        becomes fan-out jobs for the worker (module docstring). Raises
        :class:`~cachesync.errors.TransientError` when the database cannot be reached.
        """
        out = FannedOut(self._joined(actions))
        budget, lookups = self.chunk, INLINE_LOOKUPS
        for change in batch:
            for spec, relations in self.related:
                for prefix, columns in relations.triggers(
                    change.schema, change.table, self._default
                ):
                    if _untouched(change, columns) or change.position is None:
                        continue
                    for value in _values(change, relations.hops[prefix].remote):
                        job = FanoutJob(spec, prefix, value, change.position)
                        if budget <= 0 or lookups <= 0:
                            out.jobs.append(job)
                            continue
                        chunk = self.read(job, limit=budget)
                        budget -= chunk.rows
                        lookups -= 1
                        out.actions += chunk.actions
                        out.poison += chunk.poison
                        if not chunk.final:
                            job.after = chunk.last
                            out.jobs.append(job)
        return out

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

    def read(self, job: FanoutJob, *, limit: int | None = None) -> FanoutChunk:
        """The next chunk of *job* after ``job.after`` (at most *limit* rows, default
        :attr:`chunk`), planned at the job's position. Safe from any thread."""
        import sqlalchemy as sa

        spec, prefix, relations = job.spec, job.prefix, self._relations(job.spec)
        limit = self.chunk if limit is None else limit
        schema = spec.schema or self._default
        hop = relations.hops[prefix]
        pk = spec.primary_key_columns()
        try:
            with (
                self._db().connect() as conn,
                joined_reads(conn, spec, schema, types=self._types.get(id(spec))) as query,
            ):
                self._types[id(spec)] = query.types
                previous = query.t0 if len(prefix) == 1 else query.joined[prefix[:-1]]
                where = sa.and_(
                    *(previous.c[c] == v for c, v in zip(hop.local, job.value, strict=True))
                )
                keys = [query.t0.c[c] for c in pk]
                if job.after is not None:
                    after = (
                        keys[0] > job.after[0]
                        if len(keys) == 1
                        else sa.tuple_(*keys) > sa.tuple_(*job.after)
                    )
                    where = sa.and_(where, after)
                # Rows in the stored form of each column's type, as the binlog renders them.
                rows = query.rows(query.select.where(where).order_by(*keys).limit(limit))
        except sa.exc.SQLAlchemyError as exc:
            raise translate_db_error(exc, f"fan-out into {spec.table}") from exc
        self.fanned_out += len(rows)
        return plan_chunk(job, relations, rows, final=len(rows) < limit)

    def schema_changed(self, schema: object = None, query: object = "") -> None:
        """A DDL statement passed in the binlog: read the column types again."""
        self._types.clear()

    def _relations(self, spec: TableSpec) -> Relations:
        for candidate, relations in self.related:
            if candidate is spec:
                return relations
        raise KeyError(spec.model)

    def spec_of(self, model: str) -> TableSpec | None:
        """The embedding model's spec by name (a stored job's ``model``)."""
        return next((s for s, _ in self.related if s.model == model), None)

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
                pool_size=2,  # the reading thread and the fan-out worker
            )
        return self._engine


def plan_chunk(
    job: FanoutJob, relations: Relations, images: Sequence[dict[str, Any]], *, final: bool
) -> FanoutChunk:
    """The keys and documents of *images* (joined rows of ``job.spec`` read for *job*), at
    the job's position; rows whose callables raise become its dead letters."""
    spec, prefix = job.spec, job.prefix
    dependent = relations.dependent.get(prefix, ())
    documents = bool(spec.projections) and (
        prefix in relations.dependent
        or any(p[: len(prefix)] == prefix for p, _ in relations.fields.values())
    )
    pk = spec.primary_key_columns()
    chunk = FanoutChunk(
        rows=len(images),
        final=final,
        last=tuple(images[-1][c] for c in pk) if images else job.after,
    )
    for image in images:
        _plan_row(spec, image, dependent, documents, job, chunk)
    if chunk.keys:
        chunk.actions.insert(0, DeleteKeys(tuple(chunk.keys), job.position))
    return chunk


def _plan_row(
    spec: TableSpec,
    image: dict[str, Any],
    dependent: Sequence[Any],
    documents: bool,
    job: FanoutJob,
    chunk: FanoutChunk,
) -> None:
    """Add one fanned-out row's keys and documents to *chunk*.

    A template or a projection callable (``when=``, ``to_document=``) that raises
    on this row makes it a dead letter with its joined image (the redrive
    re-plans it and the retry path re-reads its current joined row); the keys
    that still render are deleted and the fan-out goes on.
    """
    row = spec.row_from_columns(image)
    position = job.position
    failed: Exception | None = None
    for template in dependent:
        try:
            key = template.render(row)
        except Exception as exc:
            if not is_poison(exc):
                raise
            failed = exc
            continue
        if key is not None:
            chunk.keys[key] = None
    if documents:
        try:
            ref = spec.row_ref(image)
            docs: list[Action] = []
            for projection in spec.projections:
                doc_id = projection.doc_id(row)
                if doc_id is None:
                    continue
                if projection.matches(row):
                    document = projection.document(row)
                    docs.append(IndexDoc(projection.index, doc_id, document, position, ref))
                else:
                    docs.append(DeleteDoc(projection.index, doc_id, position, ref))
            chunk.actions += docs
        except Exception as exc:
            if not is_poison(exc):
                raise
            failed = exc
    if failed is not None:
        change = RowChange(Op.UPDATE, spec.schema, spec.table, image, image, position)
        letter = PoisonChange.of(change, spec.model, spec.primary_key_columns(), failed)
        why = f"{letter.error} (re-rendered by the fan-out of {job.describe()})"
        chunk.poison.append(replace(letter, error=why))


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
