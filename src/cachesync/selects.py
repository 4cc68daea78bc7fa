"""The read path's ``SELECT``: a row as the binlog path would have given it.

Reindex, verify and the re-reads of retries, cascades and partial row images
read rows with a ``SELECT``, and a document or key they render must equal the
one the binlog path renders for the same row (guarantee 9). A ``SELECT``
differs from the binlog in three ways, each handled here:

* **TIMESTAMP** comes back as wall time of the session's ``time_zone``: the
  read runs in a UTC session (:func:`utc_session`, restored afterwards, since
  the connection may be the application's or carry the outbox's writes), so the
  naive value is already the UTC stored form.
* **FLOAT** goes through the text protocol with 6 significant digits
  (``1.23457`` for ``1.2345678``): it is selected as ``col + 0e0``, the exact
  double widening of the stored float32, which :func:`cachesync.values.float32`
  brings to the same shortest decimal as the binlog's 4 bytes
  (:func:`select_list`).
* Every other value is PyMySQL's view (``bytes`` for BIT, text for SET, JSON,
  zero dates, INET6...): :func:`stored_row` brings each one to the stored form
  of its column type, as ``information_schema`` names it (:func:`column_types`).

Only MySQL/MariaDB need this; the re-read of a relay on PostgreSQL or SQLite
passes rows through unchanged (their ORM fast paths do not convert either).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from . import values
from .sqltext import quote
from .sqltypes import ColumnType

__all__ = [
    "DOUBLE_ZERO",
    "ConnectionCursor",
    "column_types",
    "select_list",
    "stored_row",
    "utc_session",
]

#: Added to a FLOAT column so the server sends it as an exact DOUBLE (a DOUBLE literal).
DOUBLE_ZERO = "0e0"

_TYPES = (
    "SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS "
    "WHERE TABLE_SCHEMA = COALESCE(%s, DATABASE()) AND TABLE_NAME = %s"
)
# MariaDB's JSON is LONGTEXT with a json_valid() check; MySQL's JSON has its own type
# (COLUMN_TYPE 'json') and no TABLE_NAME in this view (error 1054: nothing to add).
_JSON_CHECKS = (
    "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS "
    "WHERE CONSTRAINT_SCHEMA = COALESCE(%s, DATABASE()) AND TABLE_NAME = %s"
)
_NO_SUCH_COLUMN = 1054


def column_types(cursor: Any, schema: str | None, table: str) -> dict[str, ColumnType]:
    """``{column: ColumnType}`` of *table* (in *schema*, else the connection's database).

    *cursor* is a DB-API cursor of PyMySQL (also the one under a SQLAlchemy
    ``mysql+pymysql`` connection). An unknown table gives ``{}``: the ``SELECT``
    that follows reports it with the database's own error.
    """
    cursor.execute(_TYPES, (schema, table))
    types = {str(name): values.column_type(str(sql)) for name, sql in cursor.fetchall()}
    texts = {n for n, t in types.items() if t.kind == "text"}
    if texts:
        for clause in _check_clauses(cursor, schema, table):
            name = clause.strip().removeprefix("json_valid(`").removesuffix("`)")
            if name in texts and clause.strip() == f"json_valid(`{name}`)":
                types[name] = ColumnType("json")
    return types


def _check_clauses(cursor: Any, schema: str | None, table: str) -> list[str]:
    try:
        cursor.execute(_JSON_CHECKS, (schema, table))
    except Exception as exc:  # PyMySQL's error, or SQLAlchemy's wrapping it as .orig
        error = getattr(exc, "orig", None) or exc
        if error.args and error.args[0] == _NO_SUCH_COLUMN:
            return []
        raise
    return [str(row[0]) for row in cursor.fetchall()]


def select_expression(column: str, ctype: ColumnType | None) -> str:
    """One item of a select list: the quoted column, a FLOAT widened (named as the column)."""
    if ctype is not None and ctype.kind == "float":
        return f"{quote(column)} + {DOUBLE_ZERO} AS {quote(column)}"
    return quote(column)


def select_list(columns: Sequence[str], types: Mapping[str, ColumnType]) -> str:
    """``col, `f` + 0e0 AS `f`, ...``: *columns* as the read path selects them."""
    return ", ".join(select_expression(c, types.get(c)) for c in columns)


def stored_row(image: Mapping[str, Any], types: Mapping[str, ColumnType]) -> dict[str, Any]:
    """*image* (keyed by column, read in a UTC session) with every value in its stored form.

    A column *types* does not know (a table changed since they were read) keeps
    PyMySQL's value.
    """
    return {
        column: values.stored(types[column], value) if column in types else value
        for column, value in image.items()
    }


@contextlib.contextmanager
def utc_session(cursor: Any) -> Iterator[None]:
    """Run the block in a UTC session ``time_zone``, then put the session's own zone back.

    ``+00:00`` needs no time zone tables. The previous zone is kept in a user
    variable of the session, so nothing is lost when the block raises; a
    connection lost meanwhile has no session left to restore.
    """
    cursor.execute("SET @cachesync_time_zone = @@session.time_zone, time_zone = '+00:00'")
    try:
        yield
    finally:
        with contextlib.suppress(Exception):  # a lost connection has no session to restore
            cursor.execute("SET time_zone = @cachesync_time_zone")


class ConnectionCursor:
    """The two DB-API cursor methods this module uses, on a SQLAlchemy connection.

    So :func:`column_types` and :func:`utc_session` serve SQLAlchemy callers (the
    re-read, the fan-out) as well as PyMySQL ones; errors arrive wrapped by
    SQLAlchemy, as :func:`cachesync.reread.translate_db_error` expects.
    """

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.rows: list[Any] = []

    def execute(self, sql: str, args: Any = None) -> None:
        result = self.conn.exec_driver_sql(sql, args) if args else self.conn.exec_driver_sql(sql)
        self.rows = list(result.fetchall()) if result.returns_rows else []

    def fetchall(self) -> list[Any]:
        return self.rows
