"""Table-statement holds: the binlog source stops before a TRUNCATE, DROP or RENAME of a watched table.

Such a statement empties or replaces a table without row events, so the keys
and documents of its rows must be purged (:mod:`.tablepurge`) before the stream
goes on. The source holds *before* it:
:meth:`~cachesync.binlog.source.BinlogSource.poll` returns what came before, then nothing, and
:attr:`~TableStatementHolds.table_statement` names it until the caller purged
and called :meth:`~TableStatementHolds.pass_table_statement`. Until then the
resume point is the statement's start, so a restart reads it again. While
catching up (changes already applied) such statements pass unheld. Which
statements count, and which tables they touch: :mod:`.tabledrops`.
"""

from __future__ import annotations

from ..registry import Registry
from . import tabledrops
from .streamstate import StreamState

__all__ = ["TableStatementHolds"]


class TableStatementHolds(StreamState):
    """The table-statement part of :class:`~cachesync.binlog.source.BinlogSource` (a mixin)."""

    _registry: Registry
    _default_schema: str | None
    _table_statement: tabledrops.TableStatement | None

    def _stop_at_table_statement(
        self, query: str, end: int, timestamp: int, schema: str | bytes | None
    ) -> bool:
        """Hold the stream at a statement that emptied or replaced a watched table.

        The stream stops *before* it (:attr:`resume_point` still names its
        start) until the caller has purged and calls :meth:`pass_table_statement`,
        so changes before it are applied first, none after it is read yet, and
        a restart before the purge finished reads the statement again.
        """
        if isinstance(schema, bytes):
            schema = schema.decode("utf-8", "replace")
        events = tabledrops.table_statement(query, schema or None)
        if not events:
            return False
        affected = tabledrops.affected(events, self._registry, self._default_schema)
        if not affected:
            return False
        # With GTIDs the statement's own transaction places it among the changes.
        position = self._row_position(self._file, end, 0, 0)
        self._table_statement = tabledrops.TableStatement(
            query, position, tuple(affected), end, timestamp
        )
        return True

    @property
    def table_statement(self) -> tabledrops.TableStatement | None:
        """The statement the stream is held at (see :meth:`pass_table_statement`), if any."""
        return self._table_statement

    def pass_table_statement(self) -> None:
        """The held statement is handled: resume after it (:attr:`resume_point` moves past it)."""
        held, self._table_statement = self._table_statement, None
        if held is not None:
            self._boundary(held.end, held.timestamp)
