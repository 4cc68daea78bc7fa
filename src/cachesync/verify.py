"""Compare what Elasticsearch and Redis hold with what the database says they should hold.

``verify_index`` reads every row of a watched table (or a random sample),
renders its projection with the same pure code the sidecar uses, scans the
index, and reports documents that are missing, stale (different content) or
orphaned (no row produces them). ``verify_keys`` renders every row's keys and
looks at Redis: a cached value must equal what the declared loader returns for
the row (when one is given: only the application knows what it caches), and a
key that no row renders any more (its row is gone, or renders another key now)
should be gone.

Rows are read as the binlog path sees them (:mod:`cachesync.selects`: a UTC
session, stored forms), so a row that is fine never looks stale.

With ``repair_at``, differences are fixed with a version derived from the
database's current position, so it is safe while the sidecar runs: any change
streamed after that position carries a higher version and wins. A document
whose stored version is already above that position (written with a version
from another server's binlog, or by hand) would refuse such a write; it is
written with the version just above its own instead, and counted as
``ahead``. Repair counts are what a re-read shows fixed, never what was sent.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .actions import DeleteDoc, DocumentAction, IndexDoc, RowRef
from .changes import Position
from .errors import PermanentError
from .keys import KeyTemplate, wire_key
from .registry import ResolvedProjection, TableSpec
from .related import joined_sql, joined_types
from .selects import column_types, select_list, stored_row, utc_session
from .sinks.elasticsearch import SearchSink
from .sinks.redis import RedisSink
from .sqltext import qualified_table, quote
from .sqltypes import ColumnType

__all__ = [
    "IndexReport",
    "KeyReport",
    "Loader",
    "consistency",
    "expected_documents",
    "table_rows",
    "verify_index",
    "verify_keys",
]

#: ``loader(template, row) -> bytes``: what the read path caches under the key *template*
#: renders for *row* (keyed by attribute); ``None`` when it caches nothing for that key.
Loader = Callable[[KeyTemplate, Mapping[str, Any]], bytes | None]

#: A fill in flight (:mod:`cachesync.leases`): neither a value nor an orphan.
_LEASE_MARKER = b"\x00cachesync-lease:"


@dataclass
class IndexReport:
    """The differences between one projection and its index."""

    index: str
    rows: int = 0
    documents: int = 0
    missing: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    #: Documents whose stored version was above the repair version (written just above it).
    ahead: list[str] = field(default_factory=list)
    repaired: int = 0
    #: How many documents were compared: each expected one, and each orphan.
    checked: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.stale or self.orphans)

    @property
    def drift(self) -> int:
        return len(self.missing) + len(self.stale) + len(self.orphans)

    def summary(self) -> str:
        return (
            f"{self.index}: {self.rows} rows, {self.documents} documents, "
            f"{len(self.missing)} missing, {len(self.stale)} stale, {len(self.orphans)} orphans"
            + (f", {self.repaired} repaired" if self.repaired else "")
            + (f" ({len(self.ahead)} written above a newer stored version)" if self.ahead else "")
        )


@dataclass
class KeyReport:
    """What Redis holds for one model's keys."""

    model: str
    rows: int = 0
    #: Keys the checked rows render.
    keys: int = 0
    #: Of those, the ones present in Redis (the read path cached them).
    cached: int = 0
    #: Cached values that differ from the loader's (only with a loader).
    stale: list[str] = field(default_factory=list)
    #: Keys matching the templates that no row renders.
    orphans: list[str] = field(default_factory=list)
    #: Templates whose orphans a sample could not look for (see :func:`verify_keys`).
    unsearched: list[str] = field(default_factory=list)
    compared: bool = False
    repaired: int = 0

    @property
    def ok(self) -> bool:
        return not (self.stale or self.orphans)

    @property
    def drift(self) -> int:
        return len(self.stale) + len(self.orphans)

    @property
    def checked(self) -> int:
        return self.cached + len(self.orphans)

    def summary(self) -> str:
        values = "values compared" if self.compared else "values not compared (no loader)"
        orphans = f"{len(self.orphans)} orphans"
        if self.unsearched:
            orphans += f" (not looked for under {', '.join(self.unsearched)})"
        return (
            f"keys: {self.rows} rows, {self.keys} keys, {self.cached} cached, "
            f"{len(self.stale)} stale, {orphans}; {values}"
            + (f", {self.repaired} repaired" if self.repaired else "")
        )


def consistency(consistent: int, total: int) -> str:
    """``"N of M consistent (99.9%)"``: rounded DOWN, with every leading nine shown.

    ``99999 of 100000`` is ``99.999%``, never a rounded-up ``100.0%``.
    """
    if total == 0:
        return "0 of 0 consistent (nothing to compare)"
    if consistent == total:
        return f"{total} of {total} consistent (100%)"

    def digits(places: int) -> int:  # the share times 10**places, exactly, rounded down
        return int(consistent * 100 * 10**places // total)

    places = 1
    while digits(places + 1) % 10 == 9 and places < 15:
        places += 1
    whole, fraction = divmod(digits(places), 10**places)
    return f"{consistent} of {total} consistent ({whole}.{fraction:0{places}d}%)"


def table_rows(
    connection: Any, spec: TableSpec, *, sample: int | None = None
) -> Iterator[dict[str, Any]]:
    """Rows of *spec*'s table keyed by column, in stored forms, through a PyMySQL *connection*.

    Read in a UTC session (put back afterwards) with FLOAT widened (:mod:`cachesync.selects`).
    """
    with connection.cursor() as cursor:
        # Related fields typed like their own tables' columns (cachesync.related).
        types = joined_types(cursor, spec, None)
    names = spec.column_names
    table = qualified_table(spec.schema, spec.table)
    sql = f"SELECT {select_list(names, types)} FROM {table}"
    if spec.related:  # joined fields: compared with a fresh joined SELECT
        sql, joined = joined_sql(spec, spec.schema, types)
        names = tuple(joined)
    if sample is not None:
        sql += f" ORDER BY RAND() LIMIT {int(sample)}"
    with connection.cursor() as cursor, utc_session(cursor):
        cursor.execute(sql)
        found = cursor.fetchall()
    for values in found:
        yield stored_row(dict(zip(names, values, strict=True)), types)


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


class _Above(Position):
    """A fixed external version just above a stored document's own (repairs only).

    Never stored or sent anywhere but to the one write it versions.
    """

    kind: ClassVar[str] = "verify"

    def __init__(self, version: int) -> None:
        self._version = version

    @property
    def version(self) -> int:
        return self._version

    def sort_key(self) -> tuple[Any, ...]:
        return (self._version,)

    def encode(self) -> str:
        return f"{self.kind}:{self._version}"


def _documents(es: Any, index: str, ids: Sequence[str]) -> dict[str, tuple[Any, int]]:
    """``{id: (source, version)}`` of the documents of *ids* that exist."""
    if not ids:
        return {}
    found = es.mget(index=index, ids=list(ids))["docs"]
    return {d["_id"]: (d["_source"], int(d.get("_version", 0))) for d in found if d.get("found")}


def verify_index(
    connection: Any,
    es: Any,
    spec: TableSpec,
    projection: ResolvedProjection,
    *,
    sample: int | None = None,
    repair_at: Position | None = None,
    rows: Sequence[Mapping[str, Any]] | None = None,
) -> IndexReport:
    """Compare *projection*'s index with the table; repair at *repair_at*'s version if given.

    With *sample*, only sampled rows are checked and orphans are not looked for
    (they can only be found by a full scan). *rows* are the table's rows when
    the caller has read them already (:func:`table_rows`).
    """
    from elasticsearch import helpers

    report = IndexReport(projection.index)
    images = rows if rows is not None else list(table_rows(connection, spec, sample=sample))
    report.rows, expected = expected_documents(spec, projection, iter(images))
    es.indices.refresh(index=projection.index, ignore_unavailable=True)
    actual: dict[str, tuple[Any, int]] = {}
    if sample is None:
        hits = helpers.scan(
            es,
            index=projection.index,
            query={"query": {"match_all": {}}, "version": True},
            ignore_unavailable=True,
        )
        actual = {hit["_id"]: (hit["_source"], int(hit.get("_version", 0))) for hit in hits}
        report.orphans = sorted(set(actual) - set(expected))
    else:
        actual = _documents(es, projection.index, list(expected))
    report.documents = len(actual)
    report.checked = len(expected) + len(report.orphans)
    for doc_id, (document, _ref) in expected.items():
        if doc_id not in actual:
            report.missing.append(doc_id)
        elif actual[doc_id][0] != document:
            report.stale.append(doc_id)
    if repair_at is not None and not report.ok:
        _repair_index(es, projection.index, report, expected, actual, repair_at)
    return report


def _repair_index(
    es: Any,
    index: str,
    report: IndexReport,
    expected: Mapping[str, tuple[dict[str, Any], RowRef]],
    actual: Mapping[str, tuple[Any, int]],
    repair_at: Position,
) -> None:
    def at(doc_id: str) -> Position:
        stored = actual.get(doc_id)
        if stored is not None and stored[1] >= repair_at.version:
            report.ahead.append(doc_id)
            return _Above(stored[1] + 1)
        return repair_at

    fixes: list[DocumentAction] = [
        IndexDoc(index, i, expected[i][0], at(i), expected[i][1])
        for i in report.missing + report.stale
    ]
    fixes += [DeleteDoc(index, i, at(i)) for i in report.orphans]
    SearchSink(es).apply(fixes)
    es.indices.refresh(index=index, ignore_unavailable=True)
    now = _documents(es, index, report.missing + report.stale + report.orphans)
    fixed = [i for i in report.missing + report.stale if i in now and now[i][0] == expected[i][0]]
    report.repaired = len(fixed) + sum(1 for i in report.orphans if i not in now)


# ---------------------------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------------------------


def _pattern(
    template: KeyTemplate, spec: TableSpec, types: Mapping[str, ColumnType], *, named: bool = False
) -> str:
    """A regular expression a key of *template* matches (integer fields as digits).

    *named*: each field's first occurrence is a group named after it, a repeat
    a back-reference.
    """
    import string

    parts: list[str] = []
    seen: set[str] = set()
    for literal, name, _spec, _conversion in string.Formatter().parse(template.text):
        parts.append(re.escape(literal))
        if name is not None:
            column = spec.columns.get(name, name)
            kind = types.get(column, ColumnType("other")).kind
            body = r"-?\d+" if kind == "int" else r".+"
            if named and name in seen:
                parts.append(f"(?P={name})")
            elif named:
                parts.append(f"(?P<{name}>{body})")
            else:
                parts.append(body)
            seen.add(name)
    return "".join(parts)


def _glob(template: KeyTemplate) -> bytes:
    """The SCAN pattern of *template*'s keys: its literal text, a ``*`` per field."""
    import string

    parts: list[str] = []
    for literal, name, _spec, _conversion in string.Formatter().parse(template.text):
        parts.append(re.sub(r"([*?\[\]\\])", r"\\\1", literal))
        if name is not None:
            parts.append("*")
    return wire_key(re.sub(r"\*+", "*", "".join(parts)))


def verify_keys(
    connection: Any,
    redis: Any,
    spec: TableSpec,
    *,
    sample: int | None = None,
    loader: Loader | None = None,
    repair: bool = False,
    others: Sequence[TableSpec] = (),
    rows: Sequence[Mapping[str, Any]] | None = None,
) -> KeyReport:
    """Compare Redis with the keys *spec*'s rows render; delete what is wrong if *repair*.

    A cached key is stale when *loader* is given and its value differs from the
    loader's for the row (a lease marker, a fill in flight, is neither). Keys
    matching a template (SCAN by its literal text) that no row renders are
    orphans, unless a template of one of *others* (the other models) matches
    them too: cachesync cannot tell whose such a key is. Without *sample* every
    such key is compared with the keys of all rows; with it, up to *sample*
    keys per template are parsed back into their field values and looked up
    (``WHERE column = value``), for templates whose fields a ``SELECT`` can
    compare as text (integers, strings, ENUM, DECIMAL, dates; at most one field
    that is not an integer, so a key parses one way only). Deleting is always
    safe: the next read loads the row again.
    """
    report = KeyReport(spec.model)
    with connection.cursor() as cursor:
        types = column_types(cursor, spec.schema, spec.table)
    images = rows if rows is not None else list(table_rows(connection, spec, sample=sample))
    rendered: dict[str, tuple[KeyTemplate, dict[str, Any]]] = {}
    for image in images:
        report.rows += 1
        row = spec.row_from_columns(image)
        for template in spec.key_templates:
            key = template.render(row)
            if key is not None:
                rendered[key] = (template, row)
    report.keys = len(rendered)
    keys = list(rendered)
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        pipe = redis.pipeline(transaction=False)
        for key in chunk:
            pipe.get(wire_key(key))
        for key, value in zip(chunk, pipe.execute(), strict=True):
            if value is None:
                continue
            report.cached += 1
            if loader is None or value.startswith(_LEASE_MARKER):
                continue
            template, row = rendered[key]
            try:
                expected = loader(template, row)
            except Exception as exc:  # the application's function: name it, not a traceback
                raise PermanentError(
                    f"{spec.model}: the loader raised {type(exc).__name__}: {exc} for key {key!r}",
                    model=spec.model,
                ) from exc
            if expected is not None and expected != value:
                report.stale.append(key)
    report.compared = loader is not None
    found = _orphan_keys(connection, redis, spec, types, set(rendered), others, sample)
    report.orphans = sorted(found)
    if sample is not None:
        report.unsearched = [
            t.text for t in spec.key_templates if _lookup(connection, spec, types, t) is None
        ]
    if repair and not report.ok:
        report.repaired = RedisSink(redis).delete(report.stale + report.orphans)
    return report


#: Column kinds whose key text a SELECT compares equal to the stored value.
_LOOKUP_KINDS = frozenset({"int", "char", "text", "enum", "decimal", "date", "datetime"})


def _orphan_keys(
    connection: Any,
    redis: Any,
    spec: TableSpec,
    types: Mapping[str, ColumnType],
    rendered: set[str],
    others: Sequence[TableSpec],
    sample: int | None,
) -> set[str]:
    own = [re.compile(_pattern(t, spec, types)) for t in spec.key_templates]
    foreign: list[re.Pattern[str]] = []
    for other in others:
        if other is spec or not other.key_templates:
            continue
        with connection.cursor() as cursor:
            their = column_types(cursor, other.schema, other.table)
        foreign += [re.compile(_pattern(t, other, their)) for t in other.key_templates]
    orphans: set[str] = set()
    for template in spec.key_templates:
        lookup = None
        if sample is not None:
            lookup = _lookup(connection, spec, types, template)
            if lookup is None:
                continue
        candidates = 0
        for raw in redis.scan_iter(match=_glob(template), count=1000):
            key = bytes(raw).decode("utf-8", "surrogateescape")
            if key in rendered or key in orphans:
                continue
            if not any(p.fullmatch(key) for p in own) or any(p.fullmatch(key) for p in foreign):
                continue
            value = redis.get(raw)
            if value is not None and value.startswith(_LEASE_MARKER):
                continue  # a fill in flight for a row this scan may not have seen yet
            if lookup is not None:
                candidates += 1
                if lookup(key):
                    continue
            orphans.add(key)
            if sample is not None and candidates >= sample:
                break
    return orphans


def _lookup(
    connection: Any, spec: TableSpec, types: Mapping[str, ColumnType], template: KeyTemplate
) -> Callable[[str], bool] | None:
    """``key -> a row renders it``, by the fields the key spells; ``None`` if it cannot tell."""
    kinds = [types.get(spec.columns[f], ColumnType("other")).kind for f in template.fields]
    if any(k not in _LOOKUP_KINDS for k in kinds) or sum(k != "int" for k in kinds) > 1:
        return None
    parse = re.compile(_pattern(template, spec, types, named=True))
    names = spec.column_names
    where = " AND ".join(f"{quote(spec.columns[f])} = %s" for f in template.fields)
    sql = (
        f"SELECT {select_list(names, types)} FROM {qualified_table(spec.schema, spec.table)} "
        f"WHERE {where} LIMIT 100"
    )

    def rendered_by_a_row(key: str) -> bool:
        match = parse.fullmatch(key)
        if match is None:
            return False
        with connection.cursor() as cursor, utc_session(cursor):
            cursor.execute(sql, [match[f] for f in template.fields])
            found = cursor.fetchall()
        rows = (
            spec.row_from_columns(stored_row(dict(zip(names, r, strict=True)), types))
            for r in found
        )
        return any(template.render(row) == key for row in rows)

    return rendered_by_a_row
