"""Rows that embed other tables: related document fields and dependent keys, resolved.

A declaration may read a related row through a to-one relation (what
django-elasticsearch-dsl calls ``related_models``; a Debezium/RDI "nest" job)::

    Projection(index="products", fields=["name"],
               related={"category_name": "category.name",
                        "department_name": "category.department.name"})
    Sync(keys=["product:{id}:card"], depends_on={"category": ["product:{id}:card"]})

Each dotted path names relations hop by hop (the ORM's relationship or foreign
key attribute: ``category``, then the category model's ``department``) and ends
in an attribute of the last model. The ORM integration follows the hops
(:data:`Walker`); this module checks the result and builds the one SQL shape
every path uses: the model's table LEFT JOINed along the hops, related values
labelled ``@<field>`` so :meth:`~cachesync.tables.TableSpec.row_from_columns`
hands them to the projection.

A related value must render exactly as the related model's own row renders
it (guarantee 9): a category's FLOAT, DECIMAL, TIMESTAMP or JSON column shows
the same in a product document as in the category's own document or key. So a
joined read is typed like the related table, not like a bare result column:
:func:`joined_types` reads the column types of the model's table AND of every
table a related field comes from, keyed as the joined result names them
(``@field``); :func:`joined_select` widens each FLOAT (own or related) to an
exact DOUBLE, and the rows are read in a UTC session and brought to their
stored forms (:mod:`cachesync.selects`). :func:`joined_reads` does all three
over a SQLAlchemy connection; DB-API callers (``reindex``, ``verify``) pass
:func:`joined_types` to :func:`joined_sql` and :func:`~cachesync.selects.stored_row`.

Documents with related fields are therefore
never rendered from a binlog row image alone: the sidecar, the retry path,
``reindex`` and ``verify`` all read the CURRENT joined row (:mod:`cachesync.reread`),
with the external version of the change that asked for it.

Relations are resolved lazily (:func:`relations_of`), because SQLAlchemy
relationships to classes defined later resolve only once every mapper is
configured; the sidecar, ``reindex`` and ``verify`` resolve them at start-up,
so a bad one fails there with a :class:`~cachesync.errors.DeclarationError`
naming the model. Django resolves them in ``ready()``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import DeclarationError
from .keys import KeyTemplate
from .selects import DOUBLE_ZERO, ConnectionCursor, column_types, stored_row, utc_session
from .sqltypes import ColumnType

if TYPE_CHECKING:
    from sqlalchemy.sql import Select

    from .tables import TableSpec

__all__ = [
    "Hop",
    "JoinedQuery",
    "Relations",
    "Walker",
    "joined_reads",
    "joined_select",
    "joined_sql",
    "joined_types",
    "label",
    "parse_path",
    "relations_of",
]

#: The prefix of a related value's label in a joined row image (never a column name here).
LABEL_PREFIX = "@"


@dataclass(frozen=True)
class Hop:
    """One to-one step from a table to the row its foreign key references.

    *local* are the foreign-key columns of the previous table, *remote* the
    columns of this table they reference (usually its primary key); *columns*
    maps this model's attribute names to its column names.
    """

    model: str
    schema: str | None
    table: str
    local: tuple[str, ...]
    remote: tuple[str, ...]
    columns: Mapping[str, str]


#: ``walk(("category", "department")) -> [Hop(categories), Hop(departments)]``: the ORM
#: integration follows a relation path from the declaring model. Raises
#: :class:`DeclarationError` naming the model and the hop it cannot follow.
Walker = Callable[[Sequence[str]], Sequence[Hop]]


def label(name: str) -> str:
    """The label of related field *name* in a joined row image."""
    return LABEL_PREFIX + name


def parse_path(model: str, name: str, path: Any) -> tuple[tuple[str, ...], str]:
    """Split ``"category.department.name"`` into ``(("category", "department"), "name")``."""
    parts = path.split(".") if isinstance(path, str) else []
    if len(parts) < 2 or not all(p.isidentifier() for p in parts):
        raise DeclarationError(
            f"{model}: related field {name!r}: {path!r} must be 'relation.attribute' "
            "(e.g. 'category.name' or 'category.department.name')",
            model=model,
        )
    return tuple(parts[:-1]), parts[-1]


@dataclass(frozen=True)
class Relations:
    """The related data of one model, resolved: hops by relation prefix, fields, dependent keys."""

    model: str
    hops: Mapping[tuple[str, ...], Hop]
    #: document field -> (relation prefix, column of the last hop)
    fields: Mapping[str, tuple[tuple[str, ...], str]]
    #: relation prefix -> key templates of this model to drop when its row changes
    dependent: Mapping[tuple[str, ...], tuple[KeyTemplate, ...]]

    def triggers(
        self, schema: str | None, table: str, default_schema: str | None
    ) -> list[tuple[tuple[str, ...], frozenset[str] | None]]:
        """The relation prefixes that end at ``schema.table``, each with the columns whose
        change matters (``None``: every column, for dependent keys)."""
        out: list[tuple[tuple[str, ...], frozenset[str] | None]] = []
        for prefix, hop in self.hops.items():
            if hop.table != table or (hop.schema or default_schema) != (schema or default_schema):
                continue
            if prefix in self.dependent:
                out.append((prefix, None))
                continue
            columns = set(hop.remote)
            columns.update(c for p, c in self.fields.values() if p == prefix)
            for deeper, h in self.hops.items():
                if len(deeper) == len(prefix) + 1 and deeper[: len(prefix)] == prefix:
                    columns.update(h.local)
            if any(p[: len(prefix)] == prefix for p, _ in self.fields.values()):
                out.append((prefix, frozenset(columns)))
        return out


def _resolve(spec: TableSpec) -> Relations:
    walker = spec.walker
    model = spec.model
    prefixes: dict[tuple[str, ...], None] = {}
    fields: dict[str, tuple[tuple[str, ...], str]] = {}
    for name, path in spec.related.items():
        relation, attribute = parse_path(model, name, path)
        fields[name] = (relation, attribute)
        prefixes.update((relation[:i], None) for i in range(1, len(relation) + 1))
    for relation in spec.depends_on:
        prefixes.update((relation[:i], None) for i in range(1, len(relation) + 1))
    if walker is None:
        raise DeclarationError(
            f"{model}: related fields / depends_on need an ORM integration that can follow "
            "relations (SQLAlchemy or Django)",
            model=model,
        )
    hops: dict[tuple[str, ...], Hop] = {}
    for prefix in sorted(prefixes, key=len):
        walked = list(walker(prefix))
        if len(walked) != len(prefix):
            raise DeclarationError(
                f"{model}: relation {'.'.join(prefix)!r} could not be followed", model=model
            )
        hops[prefix] = walked[-1]
    resolved: dict[str, tuple[tuple[str, ...], str]] = {}
    for name, (relation, attribute) in fields.items():
        hop = hops[relation]
        if attribute not in hop.columns:
            raise DeclarationError(
                f"{model}: related field {name!r}: {hop.model} has no attribute {attribute!r} "
                f"(attributes: {', '.join(sorted(hop.columns))})",
                model=model,
            )
        resolved[name] = (relation, hop.columns[attribute])
    return Relations(model, hops, resolved, dict(spec.depends_on))


_cache: dict[int, tuple[TableSpec, Relations]] = {}
_lock = threading.Lock()


def relations_of(spec: TableSpec) -> Relations | None:
    """The resolved relations of *spec* (``None``: it declares none); cached per spec.

    Raises :class:`DeclarationError` naming the model for an unknown relation, a
    to-many relation or an unknown attribute.
    """
    if not spec.related and not spec.depends_on:
        return None
    with _lock:
        hit = _cache.get(id(spec))
        if hit is not None and hit[0] is spec:
            return hit[1]
    relations = _resolve(spec)
    with _lock:
        _cache[id(spec)] = (spec, relations)
    return relations


def joined_types(cursor: Any, spec: TableSpec, schema: str | None) -> dict[str, ColumnType]:
    """Column types of *spec*'s joined read, keyed as its result columns are named.

    The model's own columns by column name, each related field by its label
    (``@category_name``) with the type of the related table's column it reads.
    *cursor* is a DB-API cursor of PyMySQL (or a
    :class:`~cachesync.selects.ConnectionCursor`); *schema* the one a spec or hop
    declared without a schema lives in. MySQL/MariaDB only.
    """
    types: dict[str, ColumnType] = dict(column_types(cursor, spec.schema or schema, spec.table))
    relations = relations_of(spec)
    if relations is None:
        return types
    tables: dict[tuple[str | None, str], dict[str, ColumnType]] = {}
    for name, (prefix, column) in relations.fields.items():
        hop = relations.hops[prefix]
        where = (hop.schema or spec.schema or schema, hop.table)
        if where not in tables:
            tables[where] = column_types(cursor, *where)
        ctype = tables[where].get(column)
        if ctype is not None:
            types[label(name)] = ctype
    return types


def _widened(column: Any, name: str, types: Mapping[str, ColumnType] | None) -> Any:
    """*column* named *name* in the select list; a FLOAT as its exact DOUBLE widening."""
    import sqlalchemy as sa

    ctype = None if types is None else types.get(name)
    if ctype is not None and ctype.kind == "float":
        return (column + sa.literal_column(DOUBLE_ZERO)).label(name)
    return column if column.name == name else column.label(name)


def joined_select(
    spec: TableSpec,
    schema: str | None,
    *,
    sqlite: bool = False,
    types: Mapping[str, ColumnType] | None = None,
) -> tuple[Select[Any], Any, dict[tuple[str, ...], Any]]:
    """``SELECT t0.<columns>, tN.<col> AS "@field" ... FROM t0 LEFT JOIN ...`` for *spec*.

    Returns the statement (without WHERE), the model's own table and the joined
    table of each relation prefix, for the caller's WHERE / ORDER BY.
    LEFT JOIN: a row whose foreign key is NULL or dangling still has its document,
    with NULL related fields. With *types* (:func:`joined_types`) every FLOAT,
    own or related, is selected as its exact DOUBLE widening; without, values
    come as the driver gives them (SQLite, PostgreSQL).
    """
    import sqlalchemy as sa

    names = list(dict.fromkeys([*spec.primary_key_columns(), *spec.column_names]))
    base = sa.table(spec.table, *(sa.column(n) for n in names), schema=None if sqlite else schema)
    t0: Any = base.alias("t0")
    relations = relations_of(spec)
    joined: dict[tuple[str, ...], Any] = {}
    source: Any = t0
    columns: list[Any] = [_widened(t0.c[n], n, types) for n in names]
    if relations is not None:
        for i, (prefix, hop) in enumerate(sorted(relations.hops.items(), key=lambda x: len(x[0]))):
            wanted = set(hop.remote)
            wanted.update(c for p, c in relations.fields.values() if p == prefix)
            for deeper, h in relations.hops.items():
                if deeper[:-1] == prefix:
                    wanted.update(h.local)  # the next hop joins on these
            table: Any = sa.table(
                hop.table,
                *(sa.column(c) for c in sorted(wanted)),
                schema=None if sqlite else (hop.schema or schema),
            ).alias(f"t{i + 1}")
            joined[prefix] = table
            previous = t0 if len(prefix) == 1 else joined[prefix[:-1]]
            on = sa.and_(
                *(
                    previous.c[local] == table.c[remote]
                    for local, remote in zip(hop.local, hop.remote, strict=True)
                )
            )
            source = source.outerjoin(table, on)
        for name, (prefix, column) in relations.fields.items():
            columns.append(_widened(joined[prefix].c[column], label(name), types))
    return sa.select(*columns).select_from(source), t0, joined


def joined_sql(
    spec: TableSpec, schema: str | None, types: Mapping[str, ColumnType] | None = None
) -> tuple[str, list[str]]:
    """:func:`joined_select` as MySQL text for DB-API callers (``reindex``, ``verify``),
    with the names of its result columns. The model's table is aliased ``t0``: qualify
    its columns in any WHERE / ORDER BY appended. Run it in a
    :func:`~cachesync.selects.utc_session` and pass each row, with *types*
    (:func:`joined_types`), to :func:`~cachesync.selects.stored_row`."""
    from sqlalchemy.dialects import mysql

    select, _, _ = joined_select(spec, schema, types=types)
    names = [str(c.name) for c in select.selected_columns]
    return str(select.compile(dialect=mysql.dialect())), names


@dataclass(frozen=True)
class JoinedQuery:
    """A joined read bound to one connection: build a statement, get stored-form rows.

    *select* is :func:`joined_select`'s statement (FLOAT widened), *t0* and
    *joined* its tables for the caller's WHERE / ORDER BY / LIMIT.
    """

    select: Select[Any]
    t0: Any
    joined: Mapping[tuple[str, ...], Any]
    types: Mapping[str, ColumnType]
    conn: Any

    def rows(self, statement: Any) -> list[dict[str, Any]]:
        """The rows of *statement* (built from :attr:`select`), keyed by column and
        ``@field`` label, every value in the stored form of its column's type."""
        return [stored_row(dict(r), self.types) for r in self.conn.execute(statement).mappings()]


@contextlib.contextmanager
def joined_reads(
    conn: Any,
    spec: TableSpec,
    schema: str | None,
    *,
    types: Mapping[str, ColumnType] | None = None,
) -> Iterator[JoinedQuery]:
    """Joined reads of *spec* over the SQLAlchemy connection *conn*, rendered as the
    binlog renders each table's own row (module docstring).

    On MySQL/MariaDB the column types are read once (:func:`joined_types`) and
    the block runs in a UTC session (the connection's own zone is put back
    afterwards); elsewhere rows pass through as the driver gives them. *types*:
    :func:`joined_types` read earlier, for a caller that keeps them (they cost one
    ``information_schema`` query per table read, about 1.3 ms each here; a
    kept copy must be dropped when one of the tables is altered). The
    retry re-read (:class:`~cachesync.reread.SqlRowReader`) reads joined rows
    through this, and so should every SQLAlchemy caller of :func:`joined_select`.
    SQLAlchemy errors propagate (callers translate them).
    """
    name = conn.dialect.name
    if name not in ("mysql", "mariadb"):
        select, t0, joined = joined_select(spec, schema, sqlite=name == "sqlite")
        yield JoinedQuery(select, t0, joined, {}, conn)
        return
    cursor = ConnectionCursor(conn)
    if types is None:
        types = joined_types(cursor, spec, schema)
    select, t0, joined = joined_select(spec, schema, types=types)
    with utc_session(cursor):
        yield JoinedQuery(select, t0, joined, types, conn)
