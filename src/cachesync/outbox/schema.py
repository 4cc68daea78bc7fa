"""The outbox's names and states, importable without SQLAlchemy; the table itself is in :mod:`.table`.

One row holds a JSON array of actions (:mod:`cachesync.codec`):

* ``kind='intent'``: written by the ORM hooks IN the application's transaction,
  holding what ``invalidates()`` declarations asked for; it exists only if the
  business change committed.
* ``kind='failed'``: written by the failure handler when Kafka is unreachable;
  the relay applies or publishes it later.

``state`` goes ``pending`` -> ``done`` (or ``dead`` after too many attempts).

The columns, types, defaults and index are described once, by
:func:`cachesync.outbox.table.outbox_table`; :func:`create_table_sql` and
:data:`COLUMNS` are derived from it (they import SQLAlchemy when first used, so
the Django integration can import the constants here without it).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "COLUMNS",
    "KIND_CHANGE",
    "KIND_FAILED",
    "KIND_INTENT",
    "OUTBOX_TABLE",
    "STATE_DEAD",
    "STATE_DONE",
    "STATE_PENDING",
    "create_table_sql",
]

OUTBOX_TABLE = "cachesync_outbox"
KIND_INTENT = "intent"
KIND_FAILED = "failed"
#: A poison row change, always ``dead``: its payload is a :class:`~cachesync.deadletters.PoisonChange`.
KIND_CHANGE = "change"
STATE_PENDING = "pending"
STATE_DONE = "done"
STATE_DEAD = "dead"

COLUMNS: tuple[str, ...]
"""Column names in table order (``id, created_at, kind, state, payload, attempts,
available_at, last_error``), read from the table definition on first access."""


def create_table_sql(table: str = OUTBOX_TABLE, dialect: str = "mysql") -> str:
    """``CREATE TABLE IF NOT EXISTS`` for *dialect* (``mysql``, ``postgresql`` or ``sqlite``).

    Compiled from :func:`cachesync.outbox.table.outbox_table`; see
    :func:`cachesync.outbox.table.create_table_sql` for what the statement holds.
    """
    from .table import create_table_sql as compile_ddl

    return compile_ddl(table, dialect)


def __getattr__(name: str) -> Any:
    # COLUMNS comes from the Table, which needs SQLAlchemy: resolve it lazily so
    # that importing the constants above never does.
    if name == "COLUMNS":
        from sqlalchemy import MetaData

        from .table import outbox_table

        columns = tuple(c.name for c in outbox_table(MetaData()).columns)
        globals()["COLUMNS"] = columns
        return columns
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
