"""Compare what Elasticsearch holds with what the database says it should hold.

``verify_index`` reads every row of a watched table (or a random sample),
renders its projection with the same pure code the sidecar uses, scans the
index, and reports documents that are missing, stale (different content) or
orphaned (no row produces them). With ``repair=True`` it fixes them with a
version derived from the database's current position, so it is safe while the
sidecar runs: any change streamed after that position carries a higher version
and wins.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .actions import DeleteDoc, DocumentAction, IndexDoc, RowRef
from .changes import Position
from .registry import ResolvedProjection, TableSpec
from .related import joined_sql
from .sinks.elasticsearch import SearchSink
from .sqltext import qualified_table, quote

__all__ = ["IndexReport", "expected_documents", "verify_index"]


@dataclass
class IndexReport:
    """The differences between one projection and its index."""

    index: str
    rows: int = 0
    documents: int = 0
    missing: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    repaired: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.stale or self.orphans)

    def summary(self) -> str:
        return (
            f"{self.index}: {self.rows} rows, {self.documents} documents, "
            f"{len(self.missing)} missing, {len(self.stale)} stale, {len(self.orphans)} orphans"
            + (f", {self.repaired} repaired" if self.repaired else "")
        )


def table_rows(
    connection: Any, spec: TableSpec, *, sample: int | None = None
) -> Iterator[dict[str, Any]]:
    """Rows of *spec*'s table keyed by column, through a DB-API (PyMySQL) *connection*."""
    names = spec.column_names
    columns = ", ".join(quote(c) for c in names)
    table = qualified_table(spec.schema, spec.table)
    sql = f"SELECT {columns} FROM {table}"
    if spec.related:  # joined fields: compared with a fresh joined SELECT
        sql, joined = joined_sql(spec, spec.schema)
        names = tuple(joined)
    if sample is not None:
        sql += f" ORDER BY RAND() LIMIT {int(sample)}"
    with connection.cursor() as cursor:
        cursor.execute(sql)
        for values in cursor.fetchall():
            yield dict(zip(names, values, strict=True))


def expected_documents(
    spec: TableSpec, projection: ResolvedProjection, rows: Iterator[Mapping[str, Any]]
) -> tuple[int, dict[str, tuple[dict[str, Any], RowRef]]]:
    """``(rows seen, {doc_id: (document, source)})`` for the rows that meet ``when``."""
    expected: dict[str, tuple[dict[str, Any], RowRef]] = {}
    seen = 0
    pk = spec.primary_key_columns()
    for image in rows:
        seen += 1
        row = spec.row_from_columns(image)
        if not projection.matches(row):
            continue
        doc_id = projection.doc_id(row)
        if doc_id is not None:
            ref = RowRef(spec.schema, spec.table, {c: image[c] for c in pk})
            expected[doc_id] = (projection.document(row), ref)
    return seen, expected


def verify_index(
    connection: Any,
    es: Any,
    spec: TableSpec,
    projection: ResolvedProjection,
    *,
    sample: int | None = None,
    repair_at: Position | None = None,
) -> IndexReport:
    """Compare *projection*'s index with the table; repair at *repair_at*'s version if given.

    With *sample*, only sampled rows are checked and orphans are not looked for
    (they can only be found by a full scan).
    """
    from elasticsearch import helpers

    report = IndexReport(projection.index)
    report.rows, expected = expected_documents(
        spec, projection, table_rows(connection, spec, sample=sample)
    )
    es.indices.refresh(index=projection.index, ignore_unavailable=True)
    actual: dict[str, Any] = {}
    if sample is None:
        hits = helpers.scan(
            es, index=projection.index, query={"query": {"match_all": {}}}, ignore_unavailable=True
        )
        actual = {hit["_id"]: hit["_source"] for hit in hits}
        report.orphans = sorted(set(actual) - set(expected))
    elif expected:
        found = es.mget(index=projection.index, ids=list(expected))["docs"]
        actual = {d["_id"]: d["_source"] for d in found if d.get("found")}
    report.documents = len(actual)
    for doc_id, (document, _ref) in expected.items():
        if doc_id not in actual:
            report.missing.append(doc_id)
        elif actual[doc_id] != document:
            report.stale.append(doc_id)
    if repair_at is not None and not report.ok:
        fixes: list[DocumentAction] = [
            IndexDoc(projection.index, i, expected[i][0], repair_at, expected[i][1])
            for i in report.missing + report.stale
        ]
        fixes += [DeleteDoc(projection.index, i, repair_at) for i in report.orphans]
        failures = SearchSink(es).apply(fixes)
        report.repaired = len(fixes) - len(failures)
    return report
