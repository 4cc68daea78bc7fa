"""Fast decoding of row images into the stored forms of :mod:`cachesync.values`.

python-mysql-replication decodes rows generically, one ``.rows`` property at a
time; for small transactions that dominates the sidecar's cost. A
:class:`RowDecoder` is built once per distinct table map (the source caches
them) with one small reader function per column, which yields the column's
stored form directly (a FLOAT as its shortest float32 decimal, a BIT as an int,
a SET in definition order, a zero date as its literal, ``latin1`` as MySQL
decodes it, a BINARY(n) padded, JSON/INET/UUID columns - which a MariaDB table
map shows as text or binary strings - by the *kinds* the source looked up).
Tables with a column type not listed in ``SUPPORTED_TYPES`` are decoded by the
library instead, and :meth:`RowDecoder.stored_image` brings its values to the
same forms (except zero dates, which the library turns into NULL); a test checks
both paths value by value.
"""

from __future__ import annotations

import codecs
import datetime
import decimal
import struct
from collections.abc import Callable, Mapping
from typing import Any

from pymysqlreplication.constants import FIELD_TYPE
from pymysqlreplication.row_event import RowsEvent

from .. import values
from ..values import ColumnType

__all__ = ["SUPPORTED_TYPES", "RowDecoder", "read_lenenc"]


Reader = Callable[[bytes, int], tuple[Any, int]]

SUPPORTED_TYPES = frozenset(
    {
        FIELD_TYPE.TINY,
        FIELD_TYPE.SHORT,
        FIELD_TYPE.LONG,
        FIELD_TYPE.FLOAT,
        FIELD_TYPE.DOUBLE,
        FIELD_TYPE.LONGLONG,
        FIELD_TYPE.INT24,
        FIELD_TYPE.DATE,
        FIELD_TYPE.YEAR,
        FIELD_TYPE.VARCHAR,
        FIELD_TYPE.TIMESTAMP2,
        FIELD_TYPE.DATETIME2,
        FIELD_TYPE.NEWDECIMAL,
        FIELD_TYPE.ENUM,
        FIELD_TYPE.BLOB,
        FIELD_TYPE.STRING,
        FIELD_TYPE.BIT,
        FIELD_TYPE.SET,
        FIELD_TYPE.TIME2,
    }
)
_FSP_BYTES = {0: 0, 1: 1, 2: 1, 3: 2, 4: 2, 5: 3, 6: 3}
_DECIMAL_BYTES = (0, 1, 1, 2, 2, 3, 3, 4, 4, 4)
_UTC = datetime.UTC
_DATETIME = ColumnType("datetime", fsp=6)
_ZERO_DATETIME = values.stored(_DATETIME, "0000-00-00 00:00:00")
#: Column kinds a MariaDB table map cannot show (JSON is LONGTEXT, INET/UUID binary strings).
_KINDS = {k: ColumnType(k) for k in ("json", "inet4", "inet6", "uuid")}


def _struct_reader(fmt: str) -> Reader:
    unpack_from = struct.Struct(fmt).unpack_from
    size = struct.calcsize(fmt)

    def read(buf: bytes, off: int) -> tuple[Any, int]:
        return unpack_from(buf, off)[0], off + size

    return read


def _int24(unsigned: bool) -> Reader:
    def read(buf: bytes, off: int) -> tuple[Any, int]:
        value = buf[off] | buf[off + 1] << 8 | buf[off + 2] << 16
        if not unsigned and value >= 0x800000:
            value -= 0x1000000
        return value, off + 3

    return read


Decode = Callable[[bytes], Any]


def _text(length_size: int, decode: Decode | None, pad: int = 0) -> Reader:
    """Length-prefixed bytes: text decoded, binary kept (a BINARY(n) padded to *pad* bytes)."""

    def read(buf: bytes, off: int) -> tuple[Any, int]:
        n = buf[off] if length_size == 1 else int.from_bytes(buf[off : off + length_size], "little")
        start = off + length_size
        end = start + n
        raw = buf[start:end]
        if decode is None:
            # The binlog cuts a BINARY's trailing NULs; the column (and a SELECT) has them.
            return (raw.ljust(pad, b"\0") if pad else raw), end
        return decode(raw), end

    return read


def _string_decoder(column: Any) -> Decode | None:
    """How *column*'s bytes become text, as the server reads them; ``None`` keeps bytes.

    The library's codec, except for ``latin1``: MySQL's is cp1252 with its five
    holes mapped to C1 controls, which Python's cp1252 refuses.
    """
    name = column.character_set_name
    if name is None:
        return _utf8
    encoding = str(RowsEvent.charset_to_encoding(name))
    try:
        codec = codecs.lookup(encoding).name
    except LookupError:
        return None
    if codec in ("cp1252", "latin-1", "iso8859-1"):
        return _latin1
    return _codec(codec)


#: MySQL ``latin1`` as one 256-character decoding table, built from
#: :func:`cachesync.values.mysql_latin1` itself so the two cannot disagree.
#: ``codecs.charmap_decode`` runs in C; ``str.translate`` with a dict looks every
#: character up in Python, which was a fifth of the sidecar's reading thread in a
#: py-spy profile of a catch-up (bench/README.md).
_LATIN1_TABLE = "".join(values.mysql_latin1(bytes([b])) for b in range(256))


def _latin1(raw: bytes) -> str:
    return codecs.charmap_decode(raw, "strict", _LATIN1_TABLE)[0]


def _codec(codec: str) -> Decode:
    def decode(raw: bytes) -> str:
        return raw.decode(codec)

    return decode


def _utf8(raw: bytes) -> str:
    return raw.decode("utf-8")


def _fsp_reader(fsp: int) -> Callable[[bytes, int], tuple[int, int]]:
    size = _FSP_BYTES.get(fsp, 0)
    scale = 10 ** (6 - fsp) if fsp else 1

    def read(buf: bytes, off: int) -> tuple[int, int]:
        if size == 0:
            return 0, off
        value = int.from_bytes(buf[off : off + size], "big", signed=True)
        if fsp % 2:
            value = int(value / 10)
        return value * scale, off + size

    return read


def _datetime2(fsp: int) -> Reader:
    read_fsp = _fsp_reader(fsp)

    def read(buf: bytes, off: int) -> tuple[Any, int]:
        data = int.from_bytes(buf[off : off + 5], "big")
        year_month = (data >> 22) & 0x1FFFF
        try:
            value = datetime.datetime(
                int(year_month / 13),
                year_month % 13,
                (data >> 17) & 0x1F,
                (data >> 12) & 0x1F,
                (data >> 6) & 0x3F,
                data & 0x3F,
            )
        except ValueError:  # a zero date: a value a key must name (the library says None)
            micro, end = read_fsp(buf, off + 5)
            parts = (int(year_month / 13), year_month % 13, (data >> 17) & 0x1F)
            clock = ((data >> 12) & 0x1F, (data >> 6) & 0x3F, data & 0x3F, micro)
            return values.stored(
                _DATETIME,
                f"{parts[0]:04d}-{parts[1]:02d}-{parts[2]:02d} "
                "{:02d}:{:02d}:{:02d}.{:06d}".format(*clock),
            ), end
        micro, end = read_fsp(buf, off + 5)
        return (value.replace(microsecond=micro) if micro > 0 else value), end

    return read


def _timestamp2(fsp: int) -> Reader:
    read_fsp = _fsp_reader(fsp)
    unpack_from = struct.Struct(">i").unpack_from

    def read(buf: bytes, off: int) -> tuple[Any, int]:
        seconds = unpack_from(buf, off)[0]
        micro, end = read_fsp(buf, off + 4)
        if seconds == 0 and micro == 0:
            return _ZERO_DATETIME, end
        value = datetime.datetime.fromtimestamp(seconds, _UTC).replace(tzinfo=None)
        return (value.replace(microsecond=micro) if micro > 0 else value), end

    return read


def _date(buf: bytes, off: int) -> tuple[Any, int]:
    value = buf[off] | buf[off + 1] << 8 | buf[off + 2] << 16
    year, month, day = (value >> 9) & 0x7FFF, (value >> 5) & 0xF, value & 0x1F
    try:
        return datetime.date(year, month, day), off + 3
    except ValueError:  # a zero date: a value a key must name (the library says None)
        return f"{year:04d}-{month:02d}-{day:02d}", off + 3


def _time2(fsp: int) -> Reader:
    """MySQL's packed TIME2 (``my_time_packed_from_binary``), sign and fraction included."""
    frac_size = _FSP_BYTES.get(fsp, 0)

    def read(buf: bytes, off: int) -> tuple[Any, int]:
        intpart = int.from_bytes(buf[off : off + 3], "big") - 0x800000
        end = off + 3 + frac_size
        if frac_size == 0:
            packed = intpart << 24
        elif frac_size == 3:
            packed = int.from_bytes(buf[off:end], "big") - 0x800000000000
        else:
            frac = int.from_bytes(buf[off + 3 : end], "big")
            if intpart < 0 and frac:
                intpart += 1
                frac -= 0x100 if frac_size == 1 else 0x10000
            packed = (intpart << 24) + frac * (10000 if frac_size == 1 else 100)
        sign = -1 if packed < 0 else 1
        packed = abs(packed)
        hms, micro = packed >> 24, packed % (1 << 24)
        delta = datetime.timedelta(
            hours=(hms >> 12) % (1 << 10), minutes=(hms >> 6) % 64, seconds=hms % 64,
            microseconds=micro,
        )  # fmt: skip
        return sign * delta, end

    return read


def _bit(size: int) -> Reader:
    def read(buf: bytes, off: int) -> tuple[Any, int]:
        return int.from_bytes(buf[off : off + size], "big"), off + size

    return read


def _set(size: int, members: list[str] | None) -> Reader:
    """A SET as its members in definition order joined by ``,`` (what a SELECT shows)."""
    names = list(members or ())

    def read(buf: bytes, off: int) -> tuple[Any, int]:
        mask = int.from_bytes(buf[off : off + size], "little")
        return ",".join(n for i, n in enumerate(names) if mask >> i & 1), off + size

    return read


def _converted(reader: Reader, convert: Callable[[Any], Any]) -> Reader:
    def read(buf: bytes, off: int) -> tuple[Any, int]:
        value, end = reader(buf, off)
        return convert(value), end

    return read


def _year(buf: bytes, off: int) -> tuple[Any, int]:
    return buf[off] + 1900, off + 1


def _enum(size: int, values: list[str] | None) -> Reader:
    def read(buf: bytes, off: int) -> tuple[Any, int]:
        index = int.from_bytes(buf[off : off + size], "little")
        return (values[index] if values else None), off + size

    return read


def _newdecimal(precision: int, decimals: int) -> Reader:
    """MySQL's packed DECIMAL, same algorithm and result as the library's reader."""
    integral = precision - decimals
    uncomp_integral, comp_integral = divmod(integral, 9)
    uncomp_fractional, comp_fractional = divmod(decimals, 9)
    size_integral = _DECIMAL_BYTES[comp_integral]
    size_fractional = _DECIMAL_BYTES[comp_fractional]
    total = size_integral + 4 * uncomp_integral + 4 * uncomp_fractional + size_fractional

    def read(buf: bytes, off: int) -> tuple[Any, int]:
        data = bytearray(buf[off : off + total])
        negative = not data[0] & 0x80
        data[0] ^= 0x80
        mask = -1 if negative else 0
        parts = ["-" if negative else ""]
        pos = 0
        if size_integral:
            value = int.from_bytes(data[pos : pos + size_integral], "big", signed=True) ^ mask
            parts.append(str(value))
            pos += size_integral
        for _ in range(uncomp_integral):
            value = int.from_bytes(data[pos : pos + 4], "big", signed=True) ^ mask
            parts.append(f"{value:09d}")
            pos += 4
        parts.append(".")
        for _ in range(uncomp_fractional):
            value = int.from_bytes(data[pos : pos + 4], "big", signed=True) ^ mask
            parts.append(f"{value:09d}")
            pos += 4
        if size_fractional:
            value = int.from_bytes(data[pos : pos + size_fractional], "big", signed=True) ^ mask
            parts.append(f"{value:0{comp_fractional}d}")
        return decimal.Decimal("".join(parts)), off + total

    return read


def _column_reader(column: Any, kind_name: str | None) -> Reader | None:
    """A reader for one column, or ``None`` when the library must decode this table."""
    reader = _type_reader(column)
    if reader is None or kind_name not in _KINDS:
        return reader
    ctype = _KINDS[kind_name]
    return _converted(reader, lambda value: values.stored(ctype, value))


def _library_converter(column: Any, kind_name: str | None) -> Callable[[Any], Any] | None:
    """How a value the library decoded becomes the column's stored form (None: it is one)."""
    kind = column.type
    ctype: ColumnType | None = _KINDS.get(kind_name or "")
    if ctype is None:
        if kind == FIELD_TYPE.FLOAT:
            ctype = ColumnType("float")
        elif kind == FIELD_TYPE.BIT:
            ctype = ColumnType("bit")
        elif kind == FIELD_TYPE.SET:
            ctype = ColumnType("set", members=tuple(column.set_values or ()))
        elif kind == FIELD_TYPE.JSON:
            ctype = ColumnType("json")
        elif kind == FIELD_TYPE.STRING and _string_decoder(column) is None:
            ctype = ColumnType("binary", length=column.max_length)
        elif kind in (FIELD_TYPE.BLOB, FIELD_TYPE.VARCHAR) and _string_decoder(column) is None:
            ctype = ColumnType("blob")
    if ctype is None:
        return None
    final = ctype
    return lambda value: values.stored(final, value)


def _type_reader(column: Any) -> Reader | None:
    kind = column.type
    unsigned = bool(column.unsigned)
    if kind == FIELD_TYPE.TINY:
        return _struct_reader("<B" if unsigned else "<b")
    if kind == FIELD_TYPE.SHORT:
        return _struct_reader("<H" if unsigned else "<h")
    if kind == FIELD_TYPE.LONG:
        return _struct_reader("<I" if unsigned else "<i")
    if kind == FIELD_TYPE.LONGLONG:
        return _struct_reader("<Q" if unsigned else "<q")
    if kind == FIELD_TYPE.INT24:
        return _int24(unsigned)
    if kind == FIELD_TYPE.FLOAT:
        return _converted(_struct_reader("<f"), values.float32)
    if kind == FIELD_TYPE.DOUBLE:
        return _struct_reader("<d")
    if kind == FIELD_TYPE.YEAR:
        return _year
    if kind == FIELD_TYPE.DATE:
        return _date
    if kind in (FIELD_TYPE.VARCHAR, FIELD_TYPE.STRING):
        decode = _string_decoder(column)
        pad = column.max_length if kind == FIELD_TYPE.STRING and decode is None else 0
        return _text(2 if column.max_length > 255 else 1, decode, pad)
    if kind == FIELD_TYPE.BLOB:
        return _text(column.length_size, _string_decoder(column))
    if kind == FIELD_TYPE.TIME2:
        return _time2(column.fsp)
    if kind == FIELD_TYPE.BIT:
        return _bit(column.bytes)
    if kind == FIELD_TYPE.SET:
        return _set(column.size, column.set_values)
    if kind == FIELD_TYPE.DATETIME2:
        return _datetime2(column.fsp)
    if kind == FIELD_TYPE.TIMESTAMP2:
        return _timestamp2(column.fsp)
    if kind == FIELD_TYPE.NEWDECIMAL:
        return _newdecimal(column.precision, column.decimals)
    if kind == FIELD_TYPE.ENUM:
        return _enum(column.size, column.enum_values)
    return None


class RowDecoder:
    """Decodes the row images of one table map, built once per distinct map.

    *kinds* names the columns whose type the map cannot show (``{"doc": "json",
    "ip": "inet6", "id": "uuid"}``, from ``information_schema``).
    """

    def __init__(self, columns: list[Any], kinds: Mapping[str, str] | None = None) -> None:
        kinds = kinds or {}
        readers = [_column_reader(c, kinds.get(str(c.name))) for c in columns]
        converters = ((str(c.name), _library_converter(c, kinds.get(str(c.name)))) for c in columns)
        self.converters = tuple((n, f) for n, f in converters if f is not None)
        self.supported = all(r is not None for r in readers) and all(
            c.type in SUPPORTED_TYPES for c in columns
        )
        self.count = len(columns)
        self.null_bytes = (self.count + 7) // 8
        self.full_bitmap = ((1 << self.count) - 1).to_bytes(self.null_bytes, "little")
        self.columns: list[tuple[int, str, Reader]] = []
        if self.supported:
            for i, (column, reader) in enumerate(zip(columns, readers, strict=True)):
                assert reader is not None
                self.columns.append((1 << i, str(column.name), reader))

    def stored_image(self, image: dict[str, Any] | None) -> dict[str, Any] | None:
        """A row image the library decoded, its values brought to their stored forms in place.

        Zero dates stay ``None`` and an empty SET too (the library says so);
        a table with a type the fast path does not read only has this path.
        """
        if image is not None:
            for name, convert in self.converters:
                value = image.get(name)
                if value is not None:
                    image[name] = convert(value)
        return image

    def image(self, buf: bytes, off: int) -> tuple[dict[str, Any], int]:
        nb = self.null_bytes
        nulls = int.from_bytes(buf[off : off + nb], "little")
        off += nb
        row: dict[str, Any] = {}
        for bit, name, read in self.columns:
            if nulls & bit:
                row[name] = None
            else:
                row[name], off = read(buf, off)
        return row, off


def read_lenenc(buf: bytes, off: int) -> tuple[int, int]:
    first = buf[off]
    if first < 251:
        return first, off + 1
    if first == 252:
        return int.from_bytes(buf[off + 1 : off + 3], "little"), off + 3
    if first == 253:
        return int.from_bytes(buf[off + 1 : off + 4], "little"), off + 4
    return int.from_bytes(buf[off + 1 : off + 9], "little"), off + 9
