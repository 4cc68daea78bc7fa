"""The outbox table, described once as a SQLAlchemy :class:`~sqlalchemy.Table`.

Everything else is derived from :func:`outbox_table`: the plain DDL that
:func:`create_table_sql` renders for MySQL/MariaDB, PostgreSQL and SQLite
(``CreateTable(...).compile(dialect=...)``), the table the relay and the store
query, the one SQLAlchemy applications add to their metadata
(:func:`cachesync.contrib.sqlalchemy.outbox_table`) and the column list
:data:`cachesync.outbox.schema.COLUMNS`. The frozen Django migration is checked
against this definition by ``tests/contrib/django/test_models.py``.

This module needs SQLAlchemy; :mod:`cachesync.outbox.schema` (the names and
states) does not, so a Django-only install can still import those.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    TIMESTAMP,
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import CreateTable
from sqlalchemy.sql.functions import FunctionElement

from .schema import OUTBOX_TABLE, STATE_PENDING

__all__ = ["DIALECTS", "create_table_sql", "outbox_table"]

#: The dialects :func:`create_table_sql` renders, by the name callers pass.
DIALECTS: dict[str, type[Dialect]] = {
    "mysql": mysql.dialect,
    "postgresql": postgresql.dialect,
    "sqlite": sqlite.dialect,
}


class _now6(FunctionElement[Any]):
    """``CURRENT_TIMESTAMP`` with microseconds where the column has them (MySQL needs ``(6)``)."""

    type = DateTime()
    inherit_cache = True


@compiles(_now6)
def _now6_default(element: Any, compiler: Any, **kw: Any) -> str:
    return "CURRENT_TIMESTAMP"


@compiles(_now6, "mysql")
@compiles(_now6, "mariadb")
def _now6_mysql(element: Any, compiler: Any, **kw: Any) -> str:
    return "CURRENT_TIMESTAMP(6)"


def _timestamp() -> Any:
    # Microseconds where the database keeps them: ids order rows, but created_at
    # is what an operator reads when two rows arrive in the same second.
    return (
        DateTime()
        .with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
        .with_variant(postgresql.TIMESTAMP(precision=6), "postgresql")
        .with_variant(TIMESTAMP(), "sqlite")
    )


def outbox_table(
    metadata: MetaData, name: str = OUTBOX_TABLE, *, schema: str | None = None
) -> Table:
    """The outbox table in *metadata* (returns the existing one if already defined there).

    ``id`` is ``BIGINT AUTO_INCREMENT`` on MySQL, ``BIGSERIAL`` on PostgreSQL and
    ``INTEGER PRIMARY KEY AUTOINCREMENT`` on SQLite (the only auto-increment
    SQLite has, and ids must never be reused: they are document versions).
    ``(state, id)`` is indexed because that is the relay's claim order.
    """
    key = f"{schema}.{name}" if schema else name
    if key in metadata.tables:
        return metadata.tables[key]
    return Table(
        name,
        metadata,
        Column(
            "id",
            BigInteger().with_variant(Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        Column("created_at", _timestamp(), nullable=False, server_default=_now6()),
        Column("kind", String(16), nullable=False),
        Column("state", String(16), nullable=False, server_default=text(f"'{STATE_PENDING}'")),
        Column(
            "payload",
            Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb"),
            nullable=False,
        ),
        Column("attempts", Integer(), nullable=False, server_default=text("0")),
        Column("available_at", _timestamp(), nullable=True),
        Column("last_error", Text(), nullable=True),
        Index(f"{name}_state_id", "state", "id"),
        schema=schema,
        sqlite_autoincrement=True,
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
        mariadb_engine="InnoDB",
        mariadb_charset="utf8mb4",
    )


def create_table_sql(table: str = OUTBOX_TABLE, dialect: str = "mysql") -> str:
    """One ``CREATE TABLE IF NOT EXISTS`` statement for *dialect*, compiled from :func:`outbox_table`.

    One statement, so any driver can run it with one ``execute`` (PyMySQL runs
    no multi-statement strings). MySQL can declare the ``(state, id)`` index
    inside ``CREATE TABLE``, so it is spliced in there; PostgreSQL and SQLite
    have no inline index syntax, so their statement carries the table only, as
    the DDL this replaces did (``metadata.create_all()`` adds the index there).
    """
    try:
        target = DIALECTS[dialect]()
    except KeyError:
        raise ValueError(f"no outbox DDL for dialect {dialect!r} ({', '.join(DIALECTS)})") from None
    outbox = outbox_table(MetaData(), table)
    ddl = str(CreateTable(outbox, if_not_exists=True).compile(dialect=target)).strip()
    if dialect == "mysql":
        quote = target.identifier_preparer.quote
        keys = [
            f"KEY {quote(str(index.name))} ({', '.join(quote(c.name) for c in index.columns)})"
            for index in sorted(outbox.indexes, key=lambda i: str(i.name))
        ]
        head, close, options = ddl.rpartition("\n)")
        ddl = head + "".join(f", \n\t{key}" for key in keys) + close + options
    return ddl
