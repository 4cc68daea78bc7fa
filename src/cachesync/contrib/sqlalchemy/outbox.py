"""The outbox table as a SQLAlchemy :class:`Table`, and the intent row the hooks write.

:func:`outbox_table` mirrors :func:`cachesync.outbox.schema.create_table_sql`
column for column on MySQL/MariaDB, PostgreSQL and SQLite, so
``metadata.create_all()`` (or an Alembic autogenerate) builds the same table the
relay and the Django app expect. The hooks write into it only when
:func:`cachesync.contrib.sqlalchemy.install` is given the table.
"""

from __future__ import annotations

from collections.abc import Iterable
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
    insert,
    text,
)
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.functions import FunctionElement

from ...actions import DeleteKeys
from ...codec import encode_actions
from ...outbox.schema import KIND_INTENT, OUTBOX_TABLE, STATE_PENDING

__all__ = ["outbox_table", "write_intents"]


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

    Same columns, types, defaults and ``(state, id)`` index as
    :mod:`cachesync.outbox.schema`; ``id`` is ``BIGINT AUTO_INCREMENT`` on MySQL,
    ``BIGSERIAL`` on PostgreSQL and ``INTEGER PRIMARY KEY AUTOINCREMENT`` on
    SQLite (the only auto-increment SQLite has).
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
        Column("state", String(16), nullable=False, server_default=text("'pending'")),
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


def write_intents(session: Session, table: Table, keys: Iterable[str]) -> None:
    """Insert one ``kind='intent'`` row holding ``DeleteKeys(keys)`` in *session*'s transaction.

    The row commits or rolls back with the business change that produced the
    keys; the relay applies it after the commit.
    """
    payload = encode_actions([DeleteKeys(tuple(dict.fromkeys(keys)))])
    session.execute(insert(table).values(kind=KIND_INTENT, state=STATE_PENDING, payload=payload))
