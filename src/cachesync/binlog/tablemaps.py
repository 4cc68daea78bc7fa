"""Which table ids of the binlog are watched, and how to decode their rows.

Every transaction re-sends a ``TableMapEvent`` for each table it touches, and
parsing one is the library's main cost for small transactions. Parsed maps are
therefore cached by their exact bytes (table id, names, column types and
metadata included), so an ``ALTER TABLE`` - which changes the bytes, and on
MySQL/MariaDB the table id too - can never reuse a stale map. The cache
survives reconnects; the table-id mapping does not (table ids are only unique
within one server run).

Column names come from the table map (``binlog_row_metadata=FULL``), so a row
is always decoded with the columns it was written with, also after
``ALTER TABLE ... ADD/DROP/RENAME COLUMN``. Some MariaDB types do not show in
a map: ``UUID``/``INET6`` look like ``BINARY(16)``, ``INET4`` like ``BINARY(4)``,
``JSON`` like ``LONGTEXT`` (with a ``json_valid`` check); when a map has such a
column, a side connection asks ``information_schema`` which they are, once per
distinct map, so the decoder renders them in their stored forms (:mod:`cachesync.values`).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pymysqlreplication.constants import FIELD_TYPE

from ..errors import SourceConfigurationError, TransientError
from ..registry import Registry, TableSpec
from . import server
from .decoder import RowDecoder
from .framing import EventParser

__all__ = ["TableMaps", "WatchedTable"]

log = logging.getLogger("cachesync.binlog")

#: Distinct parsed maps kept; each ALTER TABLE of a watched table adds one.
_CACHE_SIZE = 1024


@dataclass
class WatchedTable:
    """A watched table as described by one table map."""

    schema: str
    name: str
    decoder: RowDecoder


class TableMaps:
    """The table maps of the current dump connection, for the tables in *registry*.

    :meth:`table_map` takes every ``TableMapEvent``; :meth:`get` then says
    whether rows of a table id are watched (``None``: skip them undecoded).
    ``lib`` holds the library's parsed maps, for the rows the library decodes.
    Raises :class:`SourceConfigurationError` when the server logs no column
    names, :class:`TransientError` when the UUID question cannot be asked.
    """

    def __init__(
        self,
        params: Mapping[str, Any],
        registry: Registry,
        default_schema: str | None,
        parser: EventParser,
    ) -> None:
        self._params = dict(params)
        self._registry = registry
        self._default_schema = default_schema
        self._parser = parser
        #: table id -> watched table of the current connection.
        self.current: dict[int, WatchedTable] = {}
        #: table id -> the library's table of the current connection.
        self.lib: dict[int, Any] = {}
        # Parsed maps by their exact bytes (None: not watched). Survives reconnects.
        self._cache: OrderedDict[bytes, tuple[WatchedTable, Any] | None] = OrderedDict()

    def get(self, table_id: int) -> WatchedTable | None:
        """The watched table of *table_id* in the current connection, if any."""
        return self.current.get(table_id)

    def forget_ids(self) -> None:
        """Drop the table-id mapping (a new connection or binlog file); keep the cache."""
        self.current.clear()
        self.lib.clear()

    def table_map(self, packet: Any, data: bytes) -> None:
        """Take one ``TableMapEvent`` packet (parsed only if its bytes are new)."""
        body = data[20 : len(data) - self._parser.checksum]
        table_id = int.from_bytes(body[:6], "little")
        cache = self._cache
        try:
            entry = cache[body]
            cache.move_to_end(body)
        except KeyError:
            entry = self._parse(packet)
            cache[body] = entry
            if len(cache) > _CACHE_SIZE:
                cache.popitem(last=False)
        if entry is None:
            self.current.pop(table_id, None)
            self.lib.pop(table_id, None)
        else:
            self.current[table_id], self.lib[table_id] = entry

    def _parse(self, packet: Any) -> tuple[WatchedTable, Any] | None:
        event = self._parser.library_event(packet, self.lib)
        if event is None:  # filtered by only_tables/only_schemas
            return None
        if self._spec(event.schema, event.table) is None:
            return None
        columns = event.columns
        if any(c.name is None for c in columns):
            raise SourceConfigurationError(
                f"the binlog has no column names for {event.schema}.{event.table}; "
                "set binlog_row_metadata=FULL on the server (MySQL >= 8.0.14, MariaDB >= 10.5)"
            )
        kinds = self._hidden_kinds(event, columns)
        table = WatchedTable(event.schema, event.table, RowDecoder(columns, kinds))
        if not table.decoder.supported:
            log.info(
                "cachesync: %s.%s has column types decoded by python-mysql-replication "
                "(slower path)",
                event.schema,
                event.table,
            )
        return table, event.get_table()

    def _hidden_kinds(self, event: Any, columns: list[Any]) -> dict[str, str]:
        """``{column: "uuid"|"inet4"|"inet6"|"json"}`` for MariaDB types a map does not show.

        Asked of ``information_schema`` only when a map has a 4- or 16-byte binary
        string or a LONGTEXT column, once per distinct table map (the map cache
        keeps the answer). MySQL has no such types (its JSON has its own type
        code) and no ``TABLE_NAME`` in ``CHECK_CONSTRAINTS``: that query's error
        there just means "none".
        """
        import pymysql

        binary = [
            str(c.name)
            for c in columns
            if c.type == FIELD_TYPE.STRING
            and getattr(c, "max_length", 0) in (4, 16)
            and c.character_set_name in (None, "binary")
        ]
        texts = [
            str(c.name)
            for c in columns
            if c.type == FIELD_TYPE.BLOB
            and getattr(c, "length_size", 0) == 4
            and c.character_set_name not in (None, "binary")
        ]
        if not binary and not texts:
            return {}
        what = f"reading the column types of {event.schema}.{event.table}"
        kinds: dict[str, str] = {}
        try:
            conn = pymysql.connect(**self._params, connect_timeout=5, read_timeout=10)
            try:
                with conn.cursor() as cur:
                    if binary:
                        cur.execute(
                            "SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS "
                            "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s "
                            "AND DATA_TYPE IN ('uuid', 'inet4', 'inet6')",
                            (event.schema, event.table),
                        )
                        kinds.update((str(n), str(t)) for n, t in cur.fetchall() if n in binary)
                    if texts:
                        kinds.update(dict.fromkeys(self._json_columns(cur, event, texts), "json"))
            finally:
                conn.close()
        except pymysql.MySQLError as exc:
            # Always transient, unlike server.translate's verdict: the stream reconnects
            # and asks again, and a lasting refusal (password, grants) then stops the
            # stream's own connect with the translated error.
            raise TransientError(str(server.translate(exc, what))) from exc
        return kinds

    @staticmethod
    def _json_columns(cur: Any, event: Any, texts: list[str]) -> list[str]:
        import pymysql

        try:
            cur.execute(
                "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS "
                "WHERE CONSTRAINT_SCHEMA = %s AND TABLE_NAME = %s",
                (event.schema, event.table),
            )
        except pymysql.MySQLError as exc:  # MySQL: no TABLE_NAME column
            if exc.args and exc.args[0] == 1054:
                return []
            raise
        clauses = {str(row[0]).strip() for row in cur.fetchall()}
        return [n for n in texts if f"json_valid(`{n}`)" in clauses]

    def _spec(self, schema: str | None, table: str) -> TableSpec | None:
        spec = self._registry.get(schema, table)
        if spec is None:
            return None
        if spec.schema is None and self._default_schema and schema != self._default_schema:
            return None  # a spec without schema means the watched (default) database
        return spec
