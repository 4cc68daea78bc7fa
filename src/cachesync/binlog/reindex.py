"""``cachesync reindex MODEL``: (re)build a model's search projections from its table.

Safe while the sidecar streams, because of the order of operations:

1. Record the server's binlog position ``P`` first (``SHOW MASTER STATUS``).
2. Scan the table in primary-key order, in chunks (keyset pagination, so no
   long-running transaction or ``OFFSET`` scan), and write each row's document
   with the external version of ``P``. Every change committed after ``P`` is
   streamed with a binlog position after ``P``, hence a higher version, so it
   wins over the scan whatever order the writes arrive in.
3. After writing a chunk, re-read its rows and delete (at version ``P`` + 1)
   the documents whose row has meanwhile been deleted, stopped meeting ``when``
   or changed its document id. Elasticsearch forgets a deleted document's
   version after ``index.gc_deletes``, so a scan write that lands after the
   streamed delete could otherwise resurrect the document; ``P`` + 1 is still
   below the version of any streamed change.
4. Optionally prune: delete (at ``P`` + 1) documents of the index that no row
   produced. A document a streamed change wrote after ``P`` has a higher
   version, so Elasticsearch refuses the delete (409, counted as success).
   Only done when no other model writes to the same index.

Rows are read with PyMySQL through the ORM-neutral :class:`TableSpec` (its
column map), so Django and SQLAlchemy models are rebuilt the same way, in a UTC
session and in their stored forms (:mod:`cachesync.selects`): a reindexed
document equals the one the binlog path writes for the same row.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..actions import DeleteDoc, DocumentAction, IndexDoc, RowRef
from ..changes import BinlogPosition, GtidPosition
from ..errors import DeclarationError, PermanentError, TransientError
from ..policies import Backoff
from ..registry import Registry, ResolvedProjection, TableSpec
from ..related import joined_sql, joined_types
from ..selects import select_list, stored_row, utc_session
from ..sinks.base import DocumentSink
from ..sinks.elasticsearch import SearchSink
from ..sqltext import qualified_table, quote
from ..sqltypes import ColumnType
from . import server
from .positions import current_position

__all__ = ["WRITE_BACKOFF", "ReindexReport", "reindex"]

log = logging.getLogger("cachesync.reindex")

Progress = Callable[[int, int], None]


@dataclass
class ReindexReport:
    """What a reindex did. ``position`` is the recorded binlog position ``P``.

    ``orphans`` counts documents no scanned row produced; each was deleted at
    version ``P`` + 1, which Elasticsearch refuses (and so keeps the document)
    when a change streamed after ``P`` wrote it.
    """

    model: str
    indexes: list[str]
    position: BinlogPosition | GtidPosition
    rows: int = 0
    documents: int = 0
    deleted: int = 0
    orphans: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"reindexed {self.model} into {', '.join(self.indexes)}: {self.rows} rows, "
            f"{self.documents} documents written, {self.deleted} removed after re-check, "
            f"{self.orphans} orphan(s) pruned, at {self.position} in {self.seconds:.1f}s"
        )


#: Waits between bulk attempts: 0.4, 0.8, 1.6, 3.2 s (no jitter: one writer, no herd).
WRITE_BACKOFF = Backoff(first=0.4, cap=3.2, jitter=0.0)


class _Writer:
    """Bulk writes with a short retry; anything still failing aborts the reindex."""

    def __init__(
        self,
        sink: DocumentSink,
        attempts: int = 5,
        *,
        backoff: Backoff = WRITE_BACKOFF,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self.sink = sink
        self.attempts = attempts
        self.backoff = backoff
        self.sleep = sleep

    def write(self, actions: Sequence[DocumentAction]) -> None:
        pending = list(actions)
        for attempt in range(1, self.attempts + 1):
            try:
                failures = self.sink.apply(pending)
            except TransientError:
                if attempt == self.attempts:
                    raise
                self.sleep(self.backoff.delay(attempt))
                continue
            if not failures:
                return
            permanent = [f for f in failures if not isinstance(f.error, TransientError)]
            if permanent or attempt == self.attempts:
                shown = "; ".join(str(f.error) for f in (permanent or failures)[:3])
                raise PermanentError(f"reindex: {len(failures)} document(s) failed: {shown}")
            pending = [f.action for f in failures]
            self.sleep(self.backoff.delay(attempt))


def reindex(
    spec: TableSpec,
    *,
    connection: Any,
    search: DocumentSink,
    registry: Registry | None = None,
    database: str | None = None,
    batch_size: int = 1000,
    prune: bool = True,
    progress: Progress | None = None,
    backoff: Backoff = WRITE_BACKOFF,
    sleep: Callable[[float], object] = time.sleep,
    at: BinlogPosition | GtidPosition | None = None,
) -> ReindexReport:
    """Rebuild every projection of *spec*; see the module docstring for why it is safe.

    *connection* is a PyMySQL connection (``SELECT`` and ``REPLICATION CLIENT``).
    It is committed before every read: each chunk, and above all each re-check,
    must see the latest committed rows, not a snapshot taken at the first read
    (InnoDB's REPEATABLE READ would otherwise hide every concurrent delete).
    *database* is the schema of a spec declared without one. A bulk write that
    fails transiently is retried after *backoff*'s delays, waited with *sleep*.
    *at*: write at this position instead of the server's current one (the
    sidecar re-reads a table renamed in at the position of the RENAME, with
    every later change still to stream; :mod:`.tablepurge`).
    """
    if not spec.projections:
        raise DeclarationError(f"{spec.model} declares no search projection: nothing to reindex")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    with server.translate_errors(f"reading {spec.table}"), connection.cursor() as cur:
        # Related fields typed like their own tables' columns (cachesync.related).
        types = joined_types(cur, spec, database)
    with connection.cursor() as session, utc_session(session):
        return _reindex(
            spec, connection, search, registry, database, batch_size, prune, progress,
            backoff, sleep, types, at,
        )  # fmt: skip


def _reindex(
    spec: TableSpec,
    connection: Any,
    search: DocumentSink,
    registry: Registry | None,
    database: str | None,
    batch_size: int,
    prune: bool,
    progress: Progress | None,
    backoff: Backoff,
    sleep: Callable[[float], object],
    types: Mapping[str, ColumnType],
    at: BinlogPosition | GtidPosition | None,
) -> ReindexReport:
    started = time.monotonic()
    if at is None:
        # GTID servers: the GTID state's version, as the stream's (binlog/positions.py).
        at = current_position(connection)
    after = replace(at, row=at.row + 1)  # version P + 1, still below any later change
    report = ReindexReport(spec.model, [p.index for p in spec.projections], at)
    schema = spec.schema or database
    table = qualified_table(schema, spec.table)
    columns = list(spec.column_names)
    pk = list(spec.primary_key_columns())
    select = f"SELECT {select_list(columns, types)} FROM {table}"
    scanned, key_sql = columns, [quote(c) for c in pk]
    if spec.related:  # joined fields: the table LEFT JOINed along its relations
        select, scanned = joined_sql(spec, schema, types)
        key_sql = [f"t0.{quote(c)}" for c in pk]
    order = " ORDER BY " + ", ".join(key_sql)
    writer = _Writer(search, backoff=backoff, sleep=sleep)
    written: dict[str, set[str]] = {p.index: set() for p in spec.projections}

    with server.translate_errors(f"reading {spec.table}"), connection.cursor() as cur:
        connection.commit()
        cur.execute(f"SELECT COUNT(*) FROM {table}")
        total = int(cur.fetchone()[0])
    log.info("cachesync: reindexing %s (%d rows) at %s", spec.model, total, at)
    if progress is not None:
        progress(0, total)

    cursor_key: tuple[Any, ...] | None = None
    while True:
        sql, args = select, ()
        if cursor_key is not None:
            keys = ", ".join(key_sql)
            marks = ", ".join(["%s"] * len(pk))
            sql += f" WHERE ({keys}) > ({marks})" if len(pk) > 1 else f" WHERE {keys} > %s"
            args = cursor_key
        sql += f"{order} LIMIT {int(batch_size)}"
        with server.translate_errors(f"reading {spec.table}"), connection.cursor() as cur:
            connection.commit()
            cur.execute(sql, args)
            raw = [dict(zip(scanned, values, strict=True)) for values in cur.fetchall()]
        if not raw:
            break
        # Keys go back into SQL as the server sent them (a stored FLOAT 1.1 is not the
        # column's 1.100000023841858); rows are rendered from their stored forms.
        cursor_key = tuple(raw[-1][c] for c in pk)
        images = [(tuple(r[c] for c in pk), stored_row(r, types)) for r in raw]
        produced = _documents(spec, images, at)
        writer.write([a for a, _key in produced])
        for action, _key in produced:
            written[action.index].add(action.doc_id)
        report.rows += len(images)
        report.documents += len(produced)
        stale = _recheck(spec, connection, table, columns, types, pk, produced, after)
        if stale:
            writer.write(stale)
            report.deleted += len(stale)
        if progress is not None:
            progress(report.rows, max(total, report.rows))

    if prune:
        for projection in spec.projections:
            report.orphans += _prune(
                writer, registry, spec, projection, written[projection.index], after
            )
    report.seconds = time.monotonic() - started
    log.info("cachesync: %s", report.summary())
    return report


def _documents(
    spec: TableSpec,
    images: Iterable[tuple[tuple[Any, ...], Mapping[str, Any]]],
    at: BinlogPosition | GtidPosition,
) -> list[tuple[IndexDoc, tuple[Any, ...]]]:
    """``(IndexDoc, primary key as read)`` for every row and projection whose ``when`` holds.

    *images* are ``(primary key as read, stored image)`` pairs.
    """
    pk = spec.primary_key_columns()
    out: list[tuple[IndexDoc, tuple[Any, ...]]] = []
    for key, image in images:
        row = spec.row_from_columns(image)
        stored_key = tuple(image[c] for c in pk)
        for projection in spec.projections:
            if not projection.matches(row):
                continue
            doc_id = projection.doc_id(row)
            if doc_id is None:
                continue
            ref = RowRef(spec.schema, spec.table, dict(zip(pk, stored_key, strict=True)))
            out.append((IndexDoc(projection.index, doc_id, projection.document(row), at, ref), key))
    return out


def _recheck(
    spec: TableSpec,
    connection: Any,
    table: str,
    columns: Sequence[str],
    types: Mapping[str, ColumnType],
    pk: Sequence[str],
    produced: Sequence[tuple[IndexDoc, tuple[Any, ...]]],
    after: BinlogPosition | GtidPosition,
) -> list[DocumentAction]:
    """Deletes for written documents whose row changed in a way that removes the document."""
    if not produced:
        return []
    keys = list(dict.fromkeys(key for _doc, key in produced))
    select = f"SELECT {select_list(columns, types)} FROM {table}"
    if len(pk) == 1:
        sql = f"{select} WHERE {quote(pk[0])} IN %s"
        args: Any = ([k[0] for k in keys],)
    else:
        tuple_sql = "(" + ", ".join(["%s"] * len(pk)) + ")"
        sql = (
            f"{select} WHERE ({', '.join(quote(c) for c in pk)}) IN "
            f"({', '.join([tuple_sql] * len(keys))})"
        )
        args = [v for k in keys for v in k]
    with server.translate_errors(f"re-reading {spec.table}"), connection.cursor() as cur:
        connection.commit()  # a fresh snapshot: the point is to see what changed meanwhile
        cur.execute(sql, args)
        raw = [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]
        current = {tuple(r[c] for c in pk): stored_row(r, types) for r in raw}
    stale: list[DocumentAction] = []
    for doc, key in produced:
        image = current.get(key)
        keep = False
        if image is not None:
            row = spec.row_from_columns(image)
            for projection in spec.projections:
                if projection.index == doc.index and projection.matches(row):
                    keep = keep or projection.doc_id(row) == doc.doc_id
        if not keep:
            stale.append(DeleteDoc(doc.index, doc.doc_id, after, doc.source))
    return stale


def _prune(
    writer: _Writer,
    registry: Registry | None,
    spec: TableSpec,
    projection: ResolvedProjection,
    written: set[str],
    after: BinlogPosition | GtidPosition,
) -> int:
    """Delete documents no row produced, when *spec* is the index's only writer."""
    writers = registry.for_index(projection.index) if registry is not None else [(spec, projection)]
    if len(writers) > 1:
        log.info("cachesync: not pruning %s: %d models write to it", projection.index, len(writers))
        return 0
    from elasticsearch import ApiError, TransportError, helpers

    if not isinstance(writer.sink, SearchSink):
        raise TypeError("pruning scans the index: it needs a SearchSink")
    client = writer.sink.client
    try:
        client.indices.refresh(index=projection.index, ignore_unavailable=True)
        hits = helpers.scan(
            client,
            index=projection.index,
            query={"query": {"match_all": {}}, "_source": False},
            ignore_unavailable=True,
        )
        orphans = [hit["_id"] for hit in hits if hit["_id"] not in written]
    except (ApiError, TransportError, OSError) as exc:
        raise TransientError(f"reindex: scanning {projection.index} failed: {exc}") from exc
    if orphans:
        writer.write([DeleteDoc(projection.index, i, after) for i in orphans])
    return len(orphans)
