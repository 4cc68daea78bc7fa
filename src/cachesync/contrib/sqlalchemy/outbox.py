"""The outbox table for SQLAlchemy applications, and the intent row the hooks write.

:func:`outbox_table` is :func:`cachesync.outbox.table.outbox_table`, the one
definition of the table, so ``metadata.create_all()`` (or an Alembic
autogenerate) builds the same table the relay and the Django app expect. The
hooks write into it only when :func:`cachesync.contrib.sqlalchemy.install` is
given the table.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Table, insert
from sqlalchemy.orm import Session

from ...actions import DeleteKeys
from ...codec import encode_actions
from ...outbox.schema import KIND_INTENT, STATE_PENDING
from ...outbox.table import outbox_table

__all__ = ["outbox_table", "write_intents"]


def write_intents(session: Session, table: Table, keys: Iterable[str]) -> None:
    """Insert one ``kind='intent'`` row holding ``DeleteKeys(keys)`` in *session*'s transaction.

    The row commits or rolls back with the business change that produced the
    keys; the relay applies it after the commit.
    """
    payload = encode_actions([DeleteKeys(tuple(dict.fromkeys(keys)))])
    session.execute(insert(table).values(kind=KIND_INTENT, state=STATE_PENDING, payload=payload))
