"""``BinlogSource``: committed row changes of registered tables, read from the binlog.

This module is the only one that touches python-mysql-replication; its events
and errors become :class:`~cachesync.changes.RowChange` and
:mod:`cachesync.errors` here and nowhere else.

How it reads, and why
---------------------
* File + position mode (``COM_BINLOG_DUMP``), ``is_mariadb=False`` even on
  MariaDB (the library ignores the position when ``is_mariadb=True`` without
  GTIDs), ``resume_stream=True`` (``False`` replays the file from offset 4),
  blocking, with server heartbeats and a socket read timeout so a dead idle
  connection is noticed.
* Positions are OURS, not the library's: its ``log_pos`` also moves over
  filtered-out events and its reconnect is a single immediate retry that
  resumes mid-transaction. On any connection error the reader is rebuilt from
  :attr:`BinlogSource.resume_point` after the
  :class:`~cachesync.policies.ReconnectPolicy`'s backoff.
* A :class:`~cachesync.binlog.checkpoint.ResumePoint` is the start of the
  current transaction plus the last row handled inside it, so a restart repeats
  nothing and loses nothing even in the middle of a 1000-row transaction.
* Filtering happens before decoding: a ``TableMapEvent`` of an unregistered
  table is dropped by the library (``only_tables``/``only_schemas``) and rows
  events whose table id has no map are skipped without being decoded.
* Speed: parsing a ``TableMapEvent`` is the library's main cost for small
  transactions, and a transaction re-sends the maps of its tables every time.
  Parsed maps are therefore cached by their exact bytes (table id, names,
  column types and metadata included), so an ``ALTER TABLE`` - which changes the
  bytes, and on MySQL/MariaDB the table id too - can never reuse a stale map.
  Rows of tables whose column types are all common ones (integers, floats,
  strings, blobs, DATE, DATETIME2, TIMESTAMP2, DECIMAL, ENUM) are decoded by a
  per-table decoder (:mod:`.decoder`) built once per map; any other table uses the library's own
  decoder. ``tests/integration/binlog/test_decoder.py`` checks that both give
  identical values.
* Column names come from the table map (``binlog_row_metadata=FULL``), so a
  row is always decoded with the columns it was written with, also after
  ``ALTER TABLE ... ADD/DROP/RENAME COLUMN``.
"""

from __future__ import annotations

import inspect
import logging
import select
import struct
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pymysql
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.constants import FIELD_TYPE, NONE_SOURCE
from pymysqlreplication.event import FormatDescriptionEvent, QueryEvent, RotateEvent
from pymysqlreplication.packet import BinLogPacketWrapper
from pymysqlreplication.row_event import (
    DeleteRowsEvent,
    PartialUpdateRowsEvent,
    TableMapEvent,
    UpdateRowsEvent,
    WriteRowsEvent,
)

from .. import metrics
from ..changes import BinlogPosition, Op, RowChange
from ..errors import SourceConfigurationError, SourceError
from ..policies import ReconnectPolicy
from ..registry import Registry, TableSpec
from .checkpoint import ResumePoint
from .decoder import RowDecoder, read_lenenc

__all__ = ["BinlogSource", "ReconnectPolicy"]

log = logging.getLogger("cachesync.binlog")

# Event type codes (pymysqlreplication.constants.BINLOG), spelled out for the hot loop.
_QUERY = 0x02
_ROTATE = 0x04
_FORMAT_DESCRIPTION = 0x0F
_XID = 0x10
_TABLE_MAP = 0x13
_XA_PREPARE = 0x26
_ROWS_OPS: dict[int, Op] = {
    0x17: Op.INSERT,  # WRITE_ROWS_EVENT_V1 (MariaDB)
    0x18: Op.UPDATE,
    0x19: Op.DELETE,
    0x1E: Op.INSERT,  # WRITE_ROWS_EVENT_V2 (MySQL)
    0x1F: Op.UPDATE,
    0x20: Op.DELETE,
    0x27: Op.UPDATE,  # PARTIAL_UPDATE_ROWS_EVENT (MySQL JSON partial updates)
}
_ROWS_V2 = frozenset({0x1E, 0x1F, 0x20, 0x27})
_PARTIAL_UPDATE = 0x27
#: Compressed events (MariaDB log_bin_compress, MySQL 8 TRANSACTION_PAYLOAD_EVENT):
#: python-mysql-replication cannot read them.
_COMPRESSED = frozenset({*range(0xA5, 0xAC), 0x28})

_HEADER = struct.Struct("<IBIIIH")  # timestamp, type, server id, size, next position, flags

#: Server errors that mean "reconnecting will not help" (the guards explain most of them).
_FATAL_ERRORS = {
    1045: "access denied",
    1227: "missing privilege (the sidecar needs REPLICATION SLAVE, REPLICATION CLIENT, SELECT)",
    1236: "the server cannot send the binlog from the checkpoint",
    4052: "another replica or reader uses the same server_id",
}

_LIB_EVENTS = frozenset(
    {
        TableMapEvent,
        RotateEvent,
        FormatDescriptionEvent,
        QueryEvent,
        WriteRowsEvent,
        UpdateRowsEvent,
        DeleteRowsEvent,
        PartialUpdateRowsEvent,
    }
)

# The library's private connect method; checked at import so an incompatible release
# fails here with a clear message instead of deep inside a stream.
_CONNECT = "_BinLogStreamReader__connect_to_stream"
_USE_CHECKSUM = "_BinLogStreamReader__use_checksum"
if not hasattr(BinLogStreamReader, _CONNECT):  # pragma: no cover - depends on the installed lib
    raise ImportError(
        "cachesync.binlog needs mysql-replication 1.0.x (BinLogStreamReader internals changed)"
    )
_WRAPPER_PARAMS = frozenset(inspect.signature(BinLogPacketWrapper.__init__).parameters)


class _Transient(Exception):
    """Internal: the stream broke in a way a reconnect may fix."""


class _CtlStub:
    """Stands in for the library's second (\"control\") connection.

    With ``binlog_row_metadata=FULL`` the library needs that connection only to
    ask which DBMS it talks to; the answer comes from the stream connection, so
    the sidecar holds one connection less.
    """

    charset = "utf8mb4"

    def __init__(self, dbms: str) -> None:
        self.dbms = dbms

    def _get_dbms(self) -> str:
        return self.dbms


@dataclass
class _Table:
    """A watched table as described by one table map."""

    schema: str
    name: str
    decoder: RowDecoder
    #: MariaDB ``UUID`` columns: the binlog carries 16 bytes (trailing zeros cut), the
    #: ORM and SQL see the hyphenated text; keys must not depend on the path.
    uuid_columns: tuple[str, ...] = ()

    def fix_uuids(self, image: dict[str, Any] | None) -> None:
        """Turn the binlog bytes of UUID columns into the text form, in place."""
        if image is None:
            return
        for name in self.uuid_columns:
            value = image.get(name)
            if isinstance(value, bytes) and len(value) <= 16:
                image[name] = str(uuid.UUID(bytes=value.ljust(16, b"\0")))


# --------------------------------------------------------------------------------------------
# The reader
# --------------------------------------------------------------------------------------------


class _StreamReader(BinLogStreamReader):  # type: ignore[misc]
    """python-mysql-replication's reader, used for its connection handshake only.

    Event reading is done by :class:`BinlogSource` (see the module docstring);
    :meth:`connect` opens the dump at the explicit file and position.
    """

    def connect(self) -> Any:
        getattr(self, _CONNECT)()
        return self._stream_connection

    @property
    def use_checksum(self) -> bool:
        return bool(getattr(self, _USE_CHECKSUM, False))


class BinlogSource:
    """Streams :class:`RowChange` objects of the tables in *registry* from a resume point.

    Single-threaded and pull-based: :meth:`poll` returns up to ``max_rows``
    changes, waiting at most ``max_wait`` seconds for the first one and not
    waiting for more after that (the caller's batching loop decides how long a
    batch may stay open). :attr:`resume_point` always says
    where to restart to continue right after the last change returned, so a
    caller that saves it after applying a batch loses nothing and repeats
    nothing. Connection problems are handled inside :meth:`poll` (reconnect with
    backoff from :attr:`resume_point`); it raises only
    :class:`SourceConfigurationError` (grants, purged binlog, unsupported
    settings) and :class:`SourceError` (data it cannot read correctly).
    """

    def __init__(
        self,
        connection: Mapping[str, Any],
        registry: Registry,
        *,
        server_id: int,
        start: ResumePoint,
        default_schema: str | None = None,
        policy: ReconnectPolicy | None = None,
        stop: threading.Event | None = None,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        self._params = {k: v for k, v in connection.items() if k != "database"}
        self._registry = registry
        self._server_id = server_id
        self._default_schema = default_schema or connection.get("database")
        self._policy = policy or ReconnectPolicy.DEFAULT
        self._stop = stop or threading.Event()
        self._sleep = sleep or self._stop.wait
        specs = registry.tables()
        if not specs:
            raise SourceConfigurationError("no model is declared: nothing to watch (--models?)")
        self._only_tables = sorted({s.table for s in specs})
        schemas = {s.schema or self._default_schema for s in specs}
        self._only_schemas: list[str] | None = (
            None if None in schemas else sorted(s for s in schemas if s is not None)
        )
        # Position state (see ResumePoint).
        self._file = start.file
        self._txn_start = start.pos
        self._handled = start.handled
        self._skip = start if start.handled is not None else None
        self._commit_time = start.commit_time
        self._pending: deque[RowChange] = deque()
        self._at_boundary = True
        # Connection state.
        self._reader: _StreamReader | None = None
        self._conn: Any = None
        self._checksum = 0
        self._failures = 0
        self._last_packet = time.monotonic()
        self._ctl = _CtlStub("mysql")
        self._mysql_version: tuple[int, ...] = (0, 0, 0)
        self._post_header: tuple[int, ...] | None = None
        # table id -> watched table of the current maps; lib table map for fallback decoding.
        self._tables: dict[int, _Table] = {}
        self._lib_tables: dict[int, Any] = {}
        # Parsed maps by their exact bytes (None: not watched). Survives reconnects.
        self._map_cache: OrderedDict[bytes, tuple[_Table, Any] | None] = OrderedDict()

    # -- public -----------------------------------------------------------------------------

    @property
    def resume_point(self) -> ResumePoint:
        """Where to restart so that the next change read is the one after the last returned."""
        return ResumePoint(self._file, self._txn_start, self._handled, self._commit_time)

    @property
    def tables(self) -> list[str]:
        """The tables the reader filters on (``only_tables``)."""
        return list(self._only_tables)

    def poll(self, max_rows: int, max_wait: float) -> list[RowChange]:
        """Up to *max_rows* changes, waiting at most *max_wait* s for the first one.

        Once it has changes it returns as soon as no further transaction is
        immediately available (it finishes the transaction it is in, unless
        *max_wait* is over). Returns early, possibly empty, when the stream broke
        (it reconnects on the next call) or when the stop event is set.
        """
        deadline = time.monotonic() + max_wait
        out: list[RowChange] = []
        pending = self._pending
        while True:
            if pending:
                room = max_rows - len(out)
                if room >= len(pending):
                    out.extend(pending)
                    pending.clear()
                else:
                    out.extend(pending.popleft() for _ in range(room))
                self._handled = out[-1].position  # type: ignore[assignment]
                if len(out) >= max_rows:
                    break
                continue
            if self._stop.is_set():
                break
            now = time.monotonic()
            if out and now >= deadline:
                break
            try:
                if self._conn is None:
                    self._connect()
                # Between transactions: wait for the first change only; once there are
                # some, return as soon as nothing more is immediately available.
                wait = 0.0 if out else max(0.0, deadline - now)
                if self._at_boundary and not self._readable(wait):
                    silence = time.monotonic() - self._last_packet
                    if silence > self._policy.read_timeout:
                        # The server sends a heartbeat every `heartbeat` s on an idle
                        # stream: this much silence means the connection is dead.
                        raise _Transient(f"no event or heartbeat for {silence:.1f}s")
                    break
                self._step()
                self._last_packet = time.monotonic()
                self._failures = 0
            except _Transient as exc:
                self._disconnect()
                self._failures += 1
                delay = self._policy.backoff.delay(self._failures)
                log.warning(
                    "cachesync: binlog stream lost (%s); reconnecting from %s in %.1fs",
                    exc,
                    self.resume_point,
                    delay,
                )
                if not out:
                    self._sleep(delay)
                break
        if out:
            metrics.inc("changes_total", len(out))
        return out

    def close(self) -> None:
        """Close the stream connection (the position state is kept)."""
        self._disconnect()

    def __enter__(self) -> BinlogSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connection ---------------------------------------------------------------------------

    def _connect(self) -> None:
        """Open the dump at the transaction start; rows up to ``handled`` will be skipped."""
        self._pending.clear()
        self._tables.clear()
        self._lib_tables.clear()
        self._skip = self.resume_point if self._handled is not None else None
        self._at_boundary = True
        settings = dict(self._params)
        settings.setdefault("connect_timeout", self._policy.connect_timeout)
        settings["read_timeout"] = self._policy.read_timeout
        reader = _StreamReader(
            settings,
            server_id=self._server_id,
            resume_stream=True,
            blocking=True,
            log_file=self._file,
            log_pos=self._txn_start,
            only_tables=self._only_tables,
            only_schemas=self._only_schemas,
            slave_heartbeat=self._policy.heartbeat,
            is_mariadb=False,
            enable_logging=False,
        )
        try:
            conn = reader.connect()
        except pymysql.MySQLError as exc:
            reader.close()
            self._raise(exc)
        except OSError as exc:
            reader.close()
            raise _Transient(f"connect: {exc}") from exc
        self._reader, self._conn = reader, conn
        self._last_packet = time.monotonic()
        self._checksum = 4 if reader.use_checksum else 0
        self._ctl.dbms = "mariadb" if "MariaDB" in conn.get_server_info() else "mysql"
        log.info(
            "cachesync: streaming binlog from %s (server_id %d, tables %s)",
            self.resume_point,
            self._server_id,
            ", ".join(self._only_tables),
        )

    def _disconnect(self) -> None:
        reader, self._reader, self._conn = self._reader, None, None
        if reader is not None:
            try:
                reader.close()
            except Exception:
                log.debug("cachesync: error closing the binlog stream", exc_info=True)

    def _raise(self, exc: BaseException) -> None:
        """Translate a library/PyMySQL error: fatal ones raise, others become ``_Transient``."""
        if isinstance(exc, pymysql.MySQLError) and exc.args and isinstance(exc.args[0], int):
            code, message = exc.args[0], str(exc.args[-1])
            if code in _FATAL_ERRORS:
                hint = _FATAL_ERRORS[code]
                if code == 1236:
                    hint += (
                        f" ({self._file}:{self._txn_start}); if the file was purged, "
                        "changes are lost: restart with `cachesync listen --reset-checkpoint` "
                        "and rebuild with `cachesync reindex MODEL`"
                    )
                raise SourceConfigurationError(
                    f"binlog stream: {message} (error {code}): {hint}"
                ) from None
            if isinstance(exc, pymysql.OperationalError | pymysql.InterfaceError):
                raise _Transient(f"{message} (error {code})") from exc
            raise SourceError(f"binlog stream: {message} (error {code})") from None
        raise _Transient(f"{type(exc).__name__}: {exc}") from exc

    def _readable(self, timeout: float) -> bool:
        """Whether an event is available within *timeout* seconds, without consuming it.

        Only asked between transactions: inside one, the rest of it is already on
        its way. PyMySQL buffers the socket, so the buffer is checked first with a
        non-blocking peek, then the socket with select().
        """
        conn = self._conn
        sock, rfile = getattr(conn, "_sock", None), getattr(conn, "_rfile", None)
        if sock is None or rfile is None:
            return True
        try:
            previous = sock.gettimeout()
            sock.settimeout(0.0)
            try:
                if rfile.peek(1):
                    return True
            finally:
                sock.settimeout(previous)
            if timeout <= 0:
                return False
            ready, _, _ = select.select([sock], [], [], timeout)
        except (OSError, ValueError) as exc:
            raise _Transient(f"binlog socket: {exc}") from exc
        return bool(ready)

    # -- events -------------------------------------------------------------------------------

    def _wrap(self, packet: Any, allowed: frozenset[type]) -> Any:
        """Let the library parse one packet (table maps, rotations, queries, fallback rows)."""
        kwargs: dict[str, Any] = {
            "from_packet": packet,
            "table_map": self._lib_tables,
            "ctl_connection": self._ctl,
            "mysql_version": self._mysql_version,
            "use_checksum": bool(self._checksum),
            "allowed_events": allowed,
            "only_tables": self._only_tables,
            "ignored_tables": None,
            "only_schemas": self._only_schemas,
            "ignored_schemas": None,
            "freeze_schema": False,
            "ignore_decode_errors": False,
            "verify_checksum": False,
            "optional_meta_data": True,
            "enable_logging": False,
            "use_column_name_cache": False,
            "post_header_lengths": self._post_header,
        }
        return BinLogPacketWrapper(**{k: v for k, v in kwargs.items() if k in _WRAPPER_PARAMS})

    def _step(self) -> None:
        """Read and handle one event."""
        try:
            packet = self._conn._read_packet()
        except Exception as exc:
            self._raise(exc)
        data: bytes = packet._data
        if data[0] == 0xFE and len(data) < 9:  # EOF: the server ended the dump
            raise _Transient("the server closed the binlog stream")
        timestamp, kind, _server, _size, end, _flags = _HEADER.unpack_from(data, 1)
        try:
            if kind in _ROWS_OPS:
                self._at_boundary = False
                self._rows(packet, data, kind, timestamp, end)
            elif kind == _TABLE_MAP:
                self._at_boundary = False
                self._table_map(packet, data)
            elif kind in (_XID, _XA_PREPARE):
                self._boundary(end, timestamp)
            elif kind == _QUERY:
                event = self._wrap(packet, _LIB_EVENTS).event
                if event is not None and event.query.strip().upper() != "BEGIN":
                    # COMMIT of a non-transactional engine, DDL, SAVEPOINT, XA ...: the
                    # next statement starts with its own table maps, so it is safe to resume here.
                    self._boundary(end, timestamp)
            elif kind == _ROTATE:
                self._rotate(packet, timestamp)
            elif kind == _FORMAT_DESCRIPTION:
                event = self._wrap(packet, _LIB_EVENTS).event
                if event is not None:
                    self._mysql_version = tuple(event.mysql_version)
                    self._post_header = tuple(event.post_header_len)
            elif kind in _COMPRESSED:
                raise SourceConfigurationError(
                    f"the binlog holds compressed events at {self._file}:{self._txn_start}, "
                    "which python-mysql-replication cannot read; turn off log_bin_compress "
                    "(MariaDB) / binlog_transaction_compression (MySQL)"
                )
            # GTID, heartbeat, annotate, checkpoint, intvar ... carry nothing we need.
        except (SourceError, _Transient):
            raise
        except (struct.error, IndexError, AssertionError) as exc:
            # A truncated or garbled packet: the connection is not to be trusted.
            raise _Transient(f"unreadable event of type {kind}: {exc!r}") from exc

    def _boundary(self, end: int, timestamp: int) -> None:
        if end:
            self._txn_start = end
            self._handled = None
            self._skip = None
        self._commit_time = float(timestamp) or self._commit_time
        self._at_boundary = True

    def _rotate(self, packet: Any, timestamp: int) -> None:
        event = self._wrap(packet, _LIB_EVENTS).event
        if event is None or event.next_binlog == self._file:
            return  # the artificial rotate that opens every dump names our own file
        log.info("cachesync: binlog rotated to %s:%d", event.next_binlog, event.position)
        self._file = event.next_binlog
        self._txn_start = max(4, int(event.position))
        self._handled = None
        self._skip = None
        self._at_boundary = True
        # Table ids are only unique within one server run; a new file may follow a restart.
        self._tables.clear()
        self._lib_tables.clear()

    def _table_map(self, packet: Any, data: bytes) -> None:
        body = data[20 : len(data) - self._checksum]
        table_id = int.from_bytes(body[:6], "little")
        cache = self._map_cache
        try:
            entry = cache[body]
            cache.move_to_end(body)
        except KeyError:
            entry = self._parse_table_map(packet, table_id)
            cache[body] = entry
            if len(cache) > 1024:
                cache.popitem(last=False)
        if entry is None:
            self._tables.pop(table_id, None)
            self._lib_tables.pop(table_id, None)
        else:
            self._tables[table_id], self._lib_tables[table_id] = entry

    def _parse_table_map(self, packet: Any, table_id: int) -> tuple[_Table, Any] | None:
        event = self._wrap(packet, _LIB_EVENTS).event
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
        table = _Table(
            event.schema, event.table, RowDecoder(columns), self._uuid_columns(event, columns)
        )
        if not table.decoder.supported:
            log.info(
                "cachesync: %s.%s has column types decoded by python-mysql-replication "
                "(slower path)",
                event.schema,
                event.table,
            )
        return table, event.get_table()

    def _uuid_columns(self, event: Any, columns: list[Any]) -> tuple[str, ...]:
        """Names of MariaDB ``UUID`` columns (a table map shows them as BINARY(16)).

        Asked of ``information_schema`` only when a table has a 16-byte binary
        column, once per distinct table map (the map cache keeps the answer).
        """
        candidates = [
            str(c.name)
            for c in columns
            if c.type == FIELD_TYPE.STRING and getattr(c, "max_length", 0) == 16
        ]
        if not candidates:
            return ()
        try:
            conn = pymysql.connect(**self._params, connect_timeout=5, read_timeout=10)
            try:
                with conn.cursor() as cur:
                    cur.execute(
                        "SELECT COLUMN_NAME FROM information_schema.COLUMNS "
                        "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s AND DATA_TYPE = 'uuid'",
                        (event.schema, event.table),
                    )
                    found = {str(row[0]) for row in cur.fetchall()}
            finally:
                conn.close()
        except pymysql.MySQLError as exc:
            raise _Transient(
                f"reading the column types of {event.schema}.{event.table}: {exc}"
            ) from exc
        return tuple(c for c in candidates if c in found)

    def _spec(self, schema: str | None, table: str) -> TableSpec | None:
        spec = self._registry.get(schema, table)
        if spec is None:
            return None
        if spec.schema is None and self._default_schema and schema != self._default_schema:
            return None  # a spec without schema means the watched (default) database
        return spec

    def _rows(self, packet: Any, data: bytes, kind: int, timestamp: int, end: int) -> None:
        table_id = int.from_bytes(data[20:26], "little")
        table = self._tables.get(table_id)
        if table is None:
            return  # table not watched: filtered before decoding
        skip = self._skip
        if skip is not None and skip.handled is not None and end < skip.handled.pos:
            return  # the whole event was handled before the restart
        op = _ROWS_OPS[kind]
        images = self._decode(packet, data, kind, table)
        position_file = self._file
        commit_time = float(timestamp)
        schema, name = table.schema, table.name
        pending = self._pending
        for index, (before, after) in enumerate(images):
            if table.uuid_columns:
                table.fix_uuids(before)
                table.fix_uuids(after)
            position = BinlogPosition(position_file, end, index)
            if skip is not None and skip.already_handled(position):
                continue
            pending.append(RowChange(op, schema, name, before, after, position, commit_time))

    def _decode(
        self, packet: Any, data: bytes, kind: int, table: _Table
    ) -> list[tuple[dict[str, Any] | None, dict[str, Any] | None]]:
        decoder = table.decoder
        post_header = 10 if kind in _ROWS_V2 else 8
        declared = (
            self._post_header[kind - 1]
            if self._post_header and kind - 1 < len(self._post_header)
            else post_header
        )
        if not decoder.supported or kind == _PARTIAL_UPDATE or declared != post_header:
            return self._decode_with_library(packet, table)
        off = 28
        if kind in _ROWS_V2:
            extra = int.from_bytes(data[28:30], "little")
            off = 30 + max(0, extra - 2)
        count, off = read_lenenc(data, off)
        width = (count + 7) // 8
        update = kind == 0x18 or kind == 0x1F
        bitmaps = [data[off : off + width]]
        off += width
        if update:
            bitmaps.append(data[off : off + width])
            off += width
        if count != decoder.count or any(b != decoder.full_bitmap for b in bitmaps):
            raise self._partial_image(table)
        stop = len(data) - self._checksum
        image = decoder.image
        images: list[tuple[dict[str, Any] | None, dict[str, Any] | None]] = []
        append = images.append
        if update:
            while off < stop:
                before, off = image(data, off)
                after, off = image(data, off)
                append((before, after))
        elif kind == 0x17 or kind == 0x1E:
            while off < stop:
                row, off = image(data, off)
                append((None, row))
        else:
            while off < stop:
                row, off = image(data, off)
                append((row, None))
        return images

    def _decode_with_library(
        self, packet: Any, table: _Table
    ) -> list[tuple[dict[str, Any] | None, dict[str, Any] | None]]:
        event = self._wrap(packet, _LIB_EVENTS).event
        if event is None:
            return []
        images: list[tuple[dict[str, Any] | None, dict[str, Any] | None]] = []
        for row in event.rows:
            if "values" in row:
                sources = row.get("none_sources", {})
                image = row["values"]
                pair = (None, image) if isinstance(event, WriteRowsEvent) else (image, None)
            else:
                sources = {
                    **row.get("before_none_sources", {}),
                    **row.get("after_none_sources", {}),
                }
                pair = (row["before_values"], row["after_values"])
            if NONE_SOURCE.COLS_BITMAP in sources.values():
                raise self._partial_image(table)
            images.append(pair)
        return images

    def _partial_image(self, table: _Table) -> SourceError:
        return SourceError(
            f"a change of {table.schema}.{table.name} at {self._file}:{self._txn_start} was "
            "logged without full row images (a session used binlog_row_image != FULL); "
            "cachesync cannot know which keys the old row had. Set binlog_row_image=FULL "
            "everywhere, then restart (or skip with --reset-checkpoint and reindex)"
        )
