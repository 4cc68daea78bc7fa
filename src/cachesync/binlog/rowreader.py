"""Re-reading rows by primary key on the sidecar's own PyMySQL connection.

The same contract as :class:`~cachesync.reread.SqlRowReader` (the retry
path's reader), without SQLAlchemy: the sidecar's extra (``cachesync[mysql]``)
ships PyMySQL only, and its user already has ``SELECT`` on the watched tables.
One ``IN (...)`` query per table and chunk of 500 keys; a key the batched query
does not return under an exactly equal primary key (case-insensitive
collations, PAD SPACE) is read again on its own, so the DATABASE decides
equality and an existing row is never mistaken for a deleted one.

Rows come back in their stored forms (:mod:`cachesync.selects`: a UTC session,
FLOAT widened, every value converted by its column type), so the partial
image they complete renders as a full binlog image would.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from ..actions import RowRef
from ..errors import TransientError
from ..registry import TableSpec
from ..reread import RowReader
from ..selects import column_types, select_list, stored_row
from ..sqltext import qualified_table, quote
from ..sqltypes import ColumnType
from . import server

__all__ = ["MySQLRowReader"]

_CHUNK = 500


class MySQLRowReader(RowReader):
    """:class:`RowReader` on a lazily opened autocommit PyMySQL connection (every query
    sees the latest committed rows). Lost connections are reopened on the next call."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        self._params = dict(params)
        self._conn: Any = None
        self._lock = threading.Lock()

    def fetch(
        self, spec: TableSpec, refs: Sequence[RowRef]
    ) -> dict[RowRef, Mapping[str, Any] | None]:
        if not refs:
            return {}
        pk = spec.primary_key_columns()
        table = qualified_table(refs[0].schema or spec.schema, spec.table)
        found: dict[RowRef, Mapping[str, Any] | None] = {}
        unique = list(dict.fromkeys(refs))
        with self._lock:
            conn = self._connection()
            try:
                with server.translate_errors(f"re-reading {spec.table}"), conn.cursor() as cur:
                    types = column_types(cur, refs[0].schema or spec.schema, spec.table)
                    for start in range(0, len(unique), _CHUNK):
                        chunk = unique[start : start + _CHUNK]
                        wanted = {wanted_key(r, pk): r for r in chunk}
                        for row in self._select(cur, table, pk, list(wanted), types):
                            ref = wanted.get(tuple(row.get(c) for c in pk))
                            if ref is not None:
                                found[ref] = row
                        for ref in chunk:
                            if ref not in found:
                                one = self._select(cur, table, pk, [wanted_key(ref, pk)], types)
                                found[ref] = one[0] if one else None
            except TransientError:
                self.close()
                raise
        return found

    @staticmethod
    def _select(
        cur: Any,
        table: str,
        pk: Sequence[str],
        keys: list[tuple[Any, ...]],
        types: Mapping[str, ColumnType],
    ) -> list[dict[str, Any]]:
        columns = ", ".join(quote(c) for c in pk)
        row_sql = "(" + ", ".join(["%s"] * len(pk)) + ")"
        # Every column the table has (a partial image may need any of them), FLOAT widened.
        listed = select_list(list(types), types) if types else "*"
        where = f"({columns}) IN ({', '.join([row_sql] * len(keys))})"
        cur.execute(f"SELECT {listed} FROM {table} WHERE {where}", [v for key in keys for v in key])
        names = [d[0] for d in cur.description]
        return [stored_row(dict(zip(names, row, strict=True)), types) for row in cur.fetchall()]

    def _connection(self) -> Any:
        if self._conn is None:
            # Its own connection, so the session can stay UTC (TIMESTAMPs as stored).
            self._conn = server.connect(
                self._params,
                what="MySQL (re-reading partial row images)",
                init_command="SET time_zone = '+00:00'",
            )
        return self._conn

    def close(self) -> None:
        """Close the connection (the next fetch opens a new one)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken
                conn.close()


def wanted_key(ref: RowRef, pk: Sequence[str]) -> tuple[Any, ...]:
    """The primary key of *ref* as a tuple in *pk*'s order."""
    return tuple(ref.primary_key.get(c) for c in pk)
