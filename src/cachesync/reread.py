"""Re-reading a row's CURRENT state, so a late document write can never resurrect old content.

DESIGN.md §3: a retried (or relayed) document action does not replay the
document it carried. It re-reads the row by primary key (:class:`RowRef`) and
indexes the row's projection as it is NOW, with the action's own external
version; when the row is gone, or no longer meets the projection's ``when``,
or now renders another document id, the document is deleted instead.

Why: Elasticsearch forgets the version of a deleted document after
``index.gc_deletes`` (60 s), so replaying an old ``IndexDoc`` after a later
delete would bring the document back. Content read now is never older than the
change that queued the action; versions still settle races between writers.

The reader talks SQL through SQLAlchemy Core with lightweight ``table()``
constructs (no reflection, no metadata), so the same code serves MySQL/MariaDB,
PostgreSQL and SQLite. On MySQL/MariaDB the rows come back in their stored
forms (:mod:`cachesync.selects`), so the re-read document and keys equal those
the binlog path renders for the same row.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .actions import Action, DeleteDoc, DeleteKeys, IndexDoc, RowRef
from .errors import CacheSyncError, PermanentError, TransientError
from .registry import Registry, TableSpec, default_registry
from .related import JoinedQuery, joined_reads
from .selects import DOUBLE_ZERO, ConnectionCursor, column_types, utc_session
from .sqltypes import ColumnType

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

__all__ = ["Refresher", "RowReader", "SqlRowReader", "translate_db_error"]

#: At most this many primary keys per ``IN (...)`` query.
_CHUNK = 500


def translate_db_error(exc: BaseException, what: str) -> CacheSyncError:
    """A SQLAlchemy / DB-API error as :class:`TransientError` or :class:`PermanentError`.

    Lost connections, timeouts and lock waits may succeed later; a missing table
    or column, a type error, or a constraint will not.
    """
    from sqlalchemy import exc as sa_exc

    message = f"{what}: {type(exc).__name__}: {exc}"
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return TransientError(message)
    if isinstance(exc, (sa_exc.ProgrammingError, sa_exc.IntegrityError, sa_exc.DataError)):
        return PermanentError(message)
    if isinstance(exc, sa_exc.NoSuchModuleError | sa_exc.ArgumentError):
        return PermanentError(message)
    return TransientError(message)


class RowReader(ABC):
    """Reads rows by primary key. Implementations do I/O and nothing else."""

    @abstractmethod
    def fetch(
        self, spec: TableSpec, refs: Sequence[RowRef]
    ) -> dict[RowRef, Mapping[str, Any] | None]:
        """Current row image (keyed by COLUMN) of each ref, ``None`` when the row is gone.

        Raises :class:`TransientError` when the database cannot be reached and
        :class:`PermanentError` when the table or a column no longer exists.
        """


def _pk_tuple(ref: RowRef, pk: Sequence[str]) -> tuple[Any, ...]:
    return tuple(ref.primary_key.get(c) for c in pk)


class SqlRowReader(RowReader):
    """:class:`RowReader` on a SQLAlchemy engine: one ``IN (...)`` query per table and chunk.

    Rows that the batched query does not return under an exactly equal key
    (a case-insensitive collation, trailing spaces, type coercion) are read again
    one by one, so the DATABASE decides equality and an existing row is never
    mistaken for a deleted one.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.mysql = engine.dialect.name in ("mysql", "mariadb")

    def fetch(
        self, spec: TableSpec, refs: Sequence[RowRef]
    ) -> dict[RowRef, Mapping[str, Any] | None]:
        import sqlalchemy as sa

        pk = spec.primary_key_columns()
        names = list(dict.fromkeys([*pk, *spec.column_names]))
        schema = refs[0].schema if refs and refs[0].schema is not None else spec.schema
        if self.engine.dialect.name == "sqlite":
            schema = None  # SQLite has one unnamed schema per database file
        table: Any = sa.table(spec.table, *(sa.column(n) for n in names), schema=schema)
        found: dict[RowRef, Mapping[str, Any] | None] = {}
        unique = list(dict.fromkeys(refs))
        try:
            with self.engine.connect() as conn, self._query(conn, spec, schema, table) as query:
                key_cols = [query.t0.c[c] for c in pk]

                def select(where: Any) -> list[dict[str, Any]]:
                    return query.rows(query.select.where(where))

                for start in range(0, len(unique), _CHUNK):
                    chunk = unique[start : start + _CHUNK]
                    wanted = {_pk_tuple(r, pk): r for r in chunk}
                    if len(pk) == 1:
                        where = key_cols[0].in_([k[0] for k in wanted])
                    else:
                        where = sa.tuple_(*key_cols).in_(list(wanted))
                    for row in select(where):
                        ref = wanted.get(tuple(row[c] for c in pk))
                        if ref is not None:
                            found[ref] = row
                    for ref in chunk:
                        if ref in found:
                            continue
                        cond = sa.and_(*(col == ref.primary_key.get(col.name) for col in key_cols))
                        one = select(cond)
                        found[ref] = one[0] if one else None
        except Exception as exc:
            from sqlalchemy import exc as sa_exc

            if isinstance(exc, sa_exc.SQLAlchemyError):
                raise translate_db_error(exc, f"re-reading {spec.table}") from exc
            raise
        return found

    @contextlib.contextmanager
    def _query(
        self, conn: Any, spec: TableSpec, schema: str | None, table: Any
    ) -> Iterator[JoinedQuery]:
        """The read of *spec*'s rows, in stored forms, the block run in a UTC session
        (MySQL/MariaDB only).

        A model with related fields reads its CURRENT joined row, each related value
        typed like the related table's own column (:func:`~cachesync.related.joined_reads`).
        The engine may be shared with the outbox (the relay), whose writes must
        keep the session's own zone: it is put back after the read.
        """
        if spec.related:
            with joined_reads(conn, spec, schema) as query:
                yield query
            return
        import sqlalchemy as sa

        names = list(dict.fromkeys([*spec.primary_key_columns(), *spec.column_names]))
        if not self.mysql:
            yield JoinedQuery(sa.select(*(table.c[n] for n in names)), table, {}, {}, conn)
            return
        cursor = ConnectionCursor(conn)
        types = column_types(cursor, schema, spec.table)
        with utc_session(cursor):
            listed = sa.select(*(_listed(table.c[n], types.get(n)) for n in names))
            yield JoinedQuery(listed, table, {}, types, conn)


def _listed(column: Any, ctype: ColumnType | None) -> Any:
    """A column of the select list: FLOAT widened to an exact DOUBLE, named as the column."""
    if ctype is not None and ctype.kind == "float":
        import sqlalchemy as sa

        return (column + sa.literal_column(DOUBLE_ZERO)).label(column.name)
    return column


class Refresher:
    """Turns document actions into what the row says NOW (see the module docstring).

    ``refresh`` returns one entry per input action, in order: the action to
    apply, or the error that prevents it (a table no model declares is a
    :class:`PermanentError`: the process was started without the ``models``
    that declare it). A database outage raises :class:`TransientError` for the
    whole call. :class:`DeleteKeys` and document actions without a
    :class:`RowRef` pass through unchanged.
    """

    def __init__(self, reader: RowReader, registry: Registry = default_registry) -> None:
        self.reader = reader
        self.registry = registry

    def refresh(self, actions: Sequence[Action]) -> list[Action | CacheSyncError]:
        result: list[Action | CacheSyncError] = list(actions)
        by_table: dict[tuple[str | None, str], list[int]] = defaultdict(list)
        for i, action in enumerate(actions):
            if not isinstance(action, DeleteKeys) and action.source is not None:
                by_table[(action.source.schema, action.source.table)].append(i)
        for (schema, table), indexes in by_table.items():
            spec = self.registry.get(schema, table)
            if spec is None:
                where = f"{schema}.{table}" if schema else table
                error = PermanentError(
                    f"no model declares table {where!r}: start this process with the models "
                    "that declare it (--models / CACHESYNC_MODELS)",
                    table=table,
                    schema=schema,
                )
                for i in indexes:
                    result[i] = error
                continue
            pk = set(spec.primary_key_columns())
            mismatched = [i for i in indexes if set(_source(actions[i]).primary_key) != pk]
            for i in mismatched:
                # A key that does not name the table's primary key would re-read as
                # "row gone" and delete a real document: refuse it instead.
                result[i] = PermanentError(
                    f"{spec.model}: the action's row key {sorted(_source(actions[i]).primary_key)} "
                    f"is not the primary key of {table!r} {sorted(pk)}",
                    model=spec.model,
                )
            indexes = [i for i in indexes if i not in mismatched]
            if not indexes:
                continue
            refs = [_source(actions[i]) for i in indexes]
            try:
                rows = self.reader.fetch(spec, refs)
            except PermanentError as exc:  # this table is gone or changed: its actions fail
                for i in indexes:
                    result[i] = exc
                continue
            for i, ref in zip(indexes, refs, strict=True):
                try:
                    result[i] = current_action(spec, _document(actions[i]), rows.get(ref))
                except Exception as exc:  # a user callable (when, to_document) failed
                    result[i] = PermanentError(
                        f"{spec.model}: projecting the current row failed: "
                        f"{type(exc).__name__}: {exc}",
                        model=spec.model,
                    )
        return result


def _source(action: Action) -> RowRef:
    assert not isinstance(action, DeleteKeys) and action.source is not None
    return action.source


def _document(action: Action) -> IndexDoc | DeleteDoc:
    assert not isinstance(action, DeleteKeys)
    return action


def current_action(
    spec: TableSpec, action: IndexDoc | DeleteDoc, image: Mapping[str, Any] | None
) -> IndexDoc | DeleteDoc:
    """What *action* becomes given the row's current *image* (pure; keyed by column).

    The document id stays the action's own: a row whose projection now renders
    another id gets this id deleted; the new id has an action of its own.
    """
    if image is not None:
        row = spec.row_from_columns(image)
        for projection in spec.projections:
            if projection.index != action.index or not projection.matches(row):
                continue
            if projection.doc_id(row) == action.doc_id:
                return IndexDoc(
                    action.index,
                    action.doc_id,
                    projection.document(row),
                    action.position,
                    action.source,
                )
    return DeleteDoc(action.index, action.doc_id, action.position, action.source)
