"""Binlog packets, read on python-mysql-replication's private internals.

The library's own event loop cannot be used as is (see :mod:`.source`): it
moves its position over filtered-out events and reconnects mid-transaction.
So cachesync keeps only three things of it, all here:

* the connection handshake of :class:`BinLogStreamReader` (its private
  ``__connect_to_stream``, checked at import so an incompatible release fails
  with a clear message instead of deep inside a stream);
* :class:`BinLogPacketWrapper`, to parse the events it parses well (table maps,
  rotations, queries, format descriptions, rows of uncommon column types);
* the PyMySQL connection's packet reader and socket, to read one packet at a
  time and to ask whether one is waiting without consuming it.

Rows of tables whose column types are all common ones are decoded from the raw
packet by :class:`~cachesync.binlog.decoder.RowDecoder` instead (the library's
decoder dominates the cost of small transactions); :meth:`EventParser.row_images`
picks the path. Errors are left to the caller, which knows the position.

Partial row images (a session with ``binlog_row_image=MINIMAL`` or ``NOBLOB``,
or MySQL's ``PARTIAL_UPDATE_ROWS_EVENT`` under
``binlog_row_value_options=PARTIAL_JSON``) are decoded by the library, which
reads the event's columns-present bitmaps, and come back as
:class:`PartialRows`: a column the image does not carry is ABSENT from its
dict (never ``None``, which would be a real NULL), and a JSON column carried
only as a diff is absent too and named in ``unknown_after``.
:mod:`cachesync.binlog.partial` completes them.
"""

from __future__ import annotations

import inspect
import select
import struct
from dataclasses import dataclass
from typing import Any

from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.constants import FIELD_TYPE, NONE_SOURCE
from pymysqlreplication.event import FormatDescriptionEvent, QueryEvent, RotateEvent
from pymysqlreplication.json_binary import JsonDiff
from pymysqlreplication.packet import BinLogPacketWrapper
from pymysqlreplication.row_event import (
    DeleteRowsEvent,
    PartialUpdateRowsEvent,
    TableMapEvent,
    UpdateRowsEvent,
    WriteRowsEvent,
)

from ..changes import Op
from ..errors import TransientError
from .decoder import RowDecoder, read_lenenc

__all__ = [
    "COMPRESSED",
    "FORMAT_DESCRIPTION",
    "GTID_EVENTS",
    "HEADER",
    "MARIADB_GTID",
    "MYSQL_GTID",
    "NOT_IN_FILE",
    "QUERY",
    "ROTATE",
    "ROWS_OPS",
    "TABLE_MAP",
    "XA_PREPARE",
    "XID",
    "EventParser",
    "Images",
    "PartialRows",
    "StreamReader",
    "gtid_of",
    "read_packet",
    "readable",
]

# Event type codes (pymysqlreplication.constants.BINLOG), spelled out for the hot loop.
QUERY = 0x02
ROTATE = 0x04
FORMAT_DESCRIPTION = 0x0F
XID = 0x10
TABLE_MAP = 0x13
XA_PREPARE = 0x26
MARIADB_GTID = 0xA2
MYSQL_GTID = 0x21  # GTID_LOG_EVENT (ANONYMOUS_GTID_LOG_EVENT, 0x22, names no transaction)
GTID_EVENTS = frozenset({MARIADB_GTID, MYSQL_GTID})
#: Events whose header position is not a place in the file being read (sent by the server).
NOT_IN_FILE = frozenset({ROTATE, FORMAT_DESCRIPTION, 0x1B})  # 0x1B: HEARTBEAT_LOG_EVENT
ROWS_OPS: dict[int, Op] = {
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
COMPRESSED = frozenset({*range(0xA5, 0xAC), 0x28})

#: After the OK byte: timestamp, type, server id, size, next position, flags.
HEADER = struct.Struct("<IBIIIH")

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

_CONNECT = "_BinLogStreamReader__connect_to_stream"
_USE_CHECKSUM = "_BinLogStreamReader__use_checksum"
if not hasattr(BinLogStreamReader, _CONNECT):  # pragma: no cover - depends on the installed lib
    raise ImportError(
        "cachesync.binlog needs mysql-replication 1.0.x (BinLogStreamReader internals changed)"
    )
_WRAPPER_PARAMS = frozenset(inspect.signature(BinLogPacketWrapper.__init__).parameters)

#: ``(before, after)`` row images of one rows event; ``None`` for the side an op lacks.
Images = list[tuple[dict[str, Any] | None, dict[str, Any] | None]]


#: Column types ``binlog_row_image=NOBLOB`` leaves out when they are not needed.
_BLOB_TYPES = frozenset(
    {
        FIELD_TYPE.TINY_BLOB,
        FIELD_TYPE.MEDIUM_BLOB,
        FIELD_TYPE.LONG_BLOB,
        FIELD_TYPE.BLOB,
        FIELD_TYPE.JSON,
        FIELD_TYPE.GEOMETRY,
    }
)


@dataclass(frozen=True)
class PartialRows:
    """The row images of a rows event logged without every column.

    ``images`` leave out the columns the event does not carry; ``columns`` are
    the table map's columns (the table as of the event), so a reader can tell
    "absent from this image" from "absent from the table" (a dropped column).
    ``unknown_after`` names columns the after images changed without carrying
    their value (MySQL partial JSON updates carry a diff). ``setting`` is the
    session setting that most likely produced the event, for messages.
    """

    images: Images
    columns: tuple[str, ...]
    unknown_after: frozenset[str]
    setting: str


class StreamReader(BinLogStreamReader):  # type: ignore[misc]
    """python-mysql-replication's reader, used for its connection handshake only.

    :meth:`connect` opens the dump at the file and position given to the
    constructor and returns the PyMySQL connection; reading is the caller's.
    """

    def connect(self) -> Any:
        getattr(self, _CONNECT)()
        return self._stream_connection

    @property
    def use_checksum(self) -> bool:
        return bool(getattr(self, _USE_CHECKSUM, False))


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


def gtid_of(data: bytes, kind: int, server_id: int) -> str:
    """The transaction GTID a GTID event packet announces (``0-1-12`` / ``uuid:12``).

    MariaDB's GTID event body: seq_no (8), domain_id (4), flags2 ...; the server
    id is the event header's. MySQL's: flags (1), server uuid (16), gno (8).
    """
    if kind == MARIADB_GTID:
        seq = int.from_bytes(data[20:28], "little")
        domain = int.from_bytes(data[28:32], "little")
        return f"{domain}-{server_id}-{seq}"
    sid = bytes(data[21:37]).hex()
    gno = int.from_bytes(data[37:45], "little")
    return f"{sid[:8]}-{sid[8:12]}-{sid[12:16]}-{sid[16:20]}-{sid[20:]}:{gno}"


def read_packet(conn: Any) -> Any:
    """The next packet of the dump (blocking up to the connection's read timeout).

    Raises whatever PyMySQL raises; the caller translates it.
    """
    return conn._read_packet()


def readable(conn: Any, timeout: float) -> bool:
    """Whether a packet is available within *timeout* seconds, without consuming it.

    PyMySQL buffers the socket, so the buffer is checked first with a
    non-blocking peek, then the socket with ``select()``. A connection whose
    internals are not what PyMySQL 1.x has answers True (the read then blocks
    up to the read timeout, which is still correct, only less responsive).
    """
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
        raise TransientError(f"binlog socket: {exc}") from exc
    return bool(ready)


class EventParser:
    """Parses the packets of the dump connections of one source.

    It holds what the connection and its format description event said about
    the packets (checksum size, post-header lengths, server version, DBMS),
    and the table filter the library applies to the events it parses
    (``only_tables``/``only_schemas``), so unwatched table maps never get parsed.
    """

    def __init__(self, only_tables: list[str], only_schemas: list[str] | None) -> None:
        self.only_tables = only_tables
        self.only_schemas = only_schemas
        #: Trailing CRC32 bytes of every event (0 or 4).
        self.checksum = 0
        self._ctl = _CtlStub("mysql")
        self._mysql_version: tuple[int, ...] = (0, 0, 0)
        self._post_header: tuple[int, ...] | None = None

    def connected(self, reader: StreamReader, conn: Any) -> None:
        """Take the checksum setting and the DBMS of a newly opened dump."""
        self.checksum = 4 if reader.use_checksum else 0
        self._ctl.dbms = "mariadb" if "MariaDB" in conn.get_server_info() else "mysql"

    def library_event(self, packet: Any, table_map: dict[int, Any]) -> Any:
        """The library's event for *packet*, or ``None`` when its filters drop it."""
        kwargs: dict[str, Any] = {
            "from_packet": packet,
            "table_map": table_map,
            "ctl_connection": self._ctl,
            "mysql_version": self._mysql_version,
            "use_checksum": bool(self.checksum),
            "allowed_events": _LIB_EVENTS,
            "only_tables": self.only_tables,
            "ignored_tables": None,
            "only_schemas": self.only_schemas,
            "ignored_schemas": None,
            "freeze_schema": False,
            "ignore_decode_errors": False,
            "verify_checksum": False,
            "optional_meta_data": True,
            "enable_logging": False,
            "use_column_name_cache": False,
            "post_header_lengths": self._post_header,
        }
        return BinLogPacketWrapper(
            **{k: v for k, v in kwargs.items() if k in _WRAPPER_PARAMS}
        ).event

    def format_description(self, packet: Any) -> None:
        """Remember the server version and post-header lengths the dump announced."""
        event = self.library_event(packet, {})
        if event is not None:
            self._mysql_version = tuple(event.mysql_version)
            self._post_header = tuple(event.post_header_len)

    def row_images(
        self,
        packet: Any,
        data: bytes,
        kind: int,
        decoder: RowDecoder,
        table_map: dict[int, Any],
    ) -> Images | PartialRows:
        """The row images of a rows event of a watched table.

        Decoded from the raw bytes when *decoder* supports every column and the
        event has the layout it expects, else by the library (*table_map* holds
        its parsed maps). Rows logged without every column, or a MySQL partial JSON update, are returned as
        :class:`PartialRows` (decoded by the library, which reads the
        columns-present bitmaps).
        """
        post_header = 10 if kind in _ROWS_V2 else 8
        declared = (
            self._post_header[kind - 1]
            if self._post_header and kind - 1 < len(self._post_header)
            else post_header
        )
        if not decoder.supported or kind == _PARTIAL_UPDATE or declared != post_header:
            return self._library_images(packet, table_map, decoder)
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
            return self._library_images(packet, table_map, decoder)
        stop = len(data) - self.checksum
        image = decoder.image
        images: Images = []
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

    def _library_images(
        self, packet: Any, table_map: dict[int, Any], decoder: RowDecoder
    ) -> Images | PartialRows:
        """The library's row images, values brought to their stored forms by *decoder*."""
        event = self.library_event(packet, table_map)
        if event is None:
            return []
        images: Images = []
        absent: set[str] = set()
        unknown: set[str] = set()
        for row in event.rows:
            pair: tuple[dict[str, Any] | None, dict[str, Any] | None]
            if "values" in row:
                image = _present(row["values"], row.get("none_sources", {}), absent)
                pair = (None, image) if isinstance(event, WriteRowsEvent) else (image, None)
            else:
                before = _present(row["before_values"], row.get("before_none_sources", {}), absent)
                after = _present(row["after_values"], row.get("after_none_sources", {}), absent)
                for name, value in list(after.items()):
                    # A partial JSON update carries a diff (the library parses only its
                    # first operation), or None with JSON_PARTIAL_UPDATE: never the value.
                    if isinstance(value, JsonDiff):
                        del after[name]
                        unknown.add(name)
                for name, source in row.get("after_none_sources", {}).items():
                    if source == NONE_SOURCE.JSON_PARTIAL_UPDATE:
                        after.pop(name, None)
                        unknown.add(name)
                pair = (before, after)
            if decoder.converters:
                pair = (decoder.stored_image(pair[0]), decoder.stored_image(pair[1]))
            images.append(pair)
        if not absent and not unknown:
            return images
        columns = tuple(str(c.name) for c in event.columns)
        if unknown:
            setting = "binlog_row_value_options=PARTIAL_JSON"
        else:
            types = {str(c.name): c.type for c in event.columns}
            noblob = all(types.get(name) in _BLOB_TYPES for name in absent)
            setting = f"binlog_row_image={'NOBLOB' if noblob else 'MINIMAL'}"
        return PartialRows(images, columns, frozenset(unknown), setting)


def _present(values: dict[str, Any], sources: dict[str, Any], absent: set[str]) -> dict[str, Any]:
    """*values* without the columns the columns-present bitmap left out (added to *absent*)."""
    if NONE_SOURCE.COLS_BITMAP not in sources.values():
        return values
    missing = {name for name, source in sources.items() if source == NONE_SOURCE.COLS_BITMAP}
    absent |= missing
    return {name: value for name, value in values.items() if name not in missing}
