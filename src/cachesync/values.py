"""One canonical form per column type, shared by every path that renders a key or a document.

A key must render to the same bytes whether it is computed from the binlog, from
either ORM's instance, or from a ``SELECT`` on the read path (guarantee 9). Each
path receives something different for the same stored value: the binlog gives
a FLOAT as its float32 value widened to a double, a TIMESTAMP as UTC, a BIT as a
string of bits, a zero date as nothing at all; an ORM holds what the application
assigned (``1.1``, a ``set``, a ``dict``, a wall-clock time in the session's
zone); PyMySQL returns the text protocol's view (``bytes`` for BIT, ``str`` for
SET, JSON and zero dates). So rendering happens in two steps:

1. :func:`stored` brings a value, whichever path it came from, to the **stored
   form** of its column type (:class:`ColumnType`, parsed from the SQL type by
   :func:`column_type`, both in :mod:`cachesync.sqltypes`): the one Python
   value that stands for what the database holds. The binlog decoder produces stored forms directly.
2. :func:`key_value` and :func:`json_value` render stored forms; they need no
   type, because every stored form renders unambiguously.

The stored form per type (the README's table says the same):

* integers, YEAR, BOOL: ``int``; BIT: its unsigned integer value (``b'101'`` is ``5``);
* DECIMAL(p, s): ``Decimal`` rounded half up to *s* places, zero without a sign;
  keys print every digit, without trailing fractional zeros;
* FLOAT: the float32 value, as the double of its shortest decimal that
  round-trips through float32 (``1.100000023841858`` -> ``1.1``); DOUBLE: ``float``;
  both render with ``repr`` (``5.0``);
* CHAR/VARCHAR/TEXT/ENUM: ``str`` (CHAR without its trailing spaces); SET: ``str``,
  the members in the column's definition order joined by ``,`` (what a SELECT shows);
* JSON: the parsed value; keys render it as canonical JSON (sorted keys, ``,``
  and ``:`` without spaces, non-ASCII kept), documents carry the structure;
* BINARY(n): ``bytes`` padded with NULs to *n*; VARBINARY/BLOB: ``bytes``
  (keys keep undecodable bytes byte-exactly, see :func:`cachesync.keys.wire_key`);
* DATE/DATETIME: ``date``/``datetime`` with the column's fractional digits;
  TIMESTAMP: the naive **UTC** ``datetime``, whatever the session time zone that
  wrote or reads it; a zero or partly zero date is the ISO-shaped literal string
  (``0000-00-00``, ``2024-00-00T10:11:12``): it is a value the key must name, not NULL;
* TIME: ``timedelta`` (sign and hours past 24 kept: ``-838:59:59``);
* INET4/INET6: the text form (``::1``, ``::ffff:1.2.3.4``, IPv4-compatible and
  -mapped addresses dotted as MariaDB prints them); UUID: lower-case hyphenated text.
"""

from __future__ import annotations

import datetime as dt
import enum
import ipaddress
import json
import math
import re
import struct
import uuid
from collections.abc import Iterable, Mapping
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation
from typing import Any

from .sqltypes import ColumnType, column_type, mysql_latin1, zone_from

__all__ = [
    "ColumnType",
    "column_type",
    "float32",
    "json_text",
    "json_value",
    "key_value",
    "mysql_latin1",
    "stored",
    "zone_from",
]

# ---------------------------------------------------------------------------------------------
# Stored forms
# ---------------------------------------------------------------------------------------------

_WIDE = Context(prec=200)  # DECIMAL has at most 65 digits: never round through the context
_FLOAT32 = struct.Struct("<f")
_UTC = dt.UTC
_EPOCH = dt.datetime(1970, 1, 1)
_TEMPORAL = re.compile(
    r"\s*(\d{1,4})-(\d{1,2})-(\d{1,2})(?:[ T](\d{1,2}):(\d{1,2}):(\d{1,2})(?:\.(\d{0,6})\d*)?)?\s*$"
)
_CLOCK = re.compile(r"\s*(-)?(?:(\d+) )?(\d{1,3}):(\d{1,2})(?::(\d{1,2})(?:\.(\d{0,6})\d*)?)?\s*$")


def float32(value: float) -> float:
    """The FLOAT column's value of *value*: rounded to float32, as its shortest decimal.

    The binlog carries the 4 stored bytes (Python widens them to ``1.100000023841858``),
    the ORM holds what was assigned (``1.1``): both become the double of the
    shortest decimal that reads back as the same float32 (``1.1``), which is also
    what MySQL 8 prints. Values beyond float32's range raise ``OverflowError``,
    as the database refuses them.
    """
    single = _FLOAT32.unpack(_FLOAT32.pack(value))[0]
    if not math.isfinite(single) or single == 0:
        return float(single)
    for digits in range(1, 10):
        candidate = float(f"{single:.{digits}g}")
        try:
            if _FLOAT32.unpack(_FLOAT32.pack(candidate))[0] == single:
                return candidate
        except OverflowError:  # near float32's maximum a shorter decimal rounds past it
            continue
    return float(single)  # pragma: no cover - 9 significant digits always round-trip


def _fraction(micro: int, fsp: int) -> int:
    step: int = 10 ** (6 - min(max(fsp, 0), 6))
    return micro - micro % step


def _zero_literal(parts: tuple[int, int, int], clock: tuple[int, int, int, int] | None) -> str:
    """The ISO-shaped literal of a date MySQL keeps but Python cannot hold."""
    text = "{:04d}-{:02d}-{:02d}".format(*parts)
    if clock is None:
        return text
    hour, minute, second, micro = clock
    text += f"T{hour:02d}:{minute:02d}:{second:02d}"
    return f"{text}.{micro:06d}" if micro else text


def _temporal(ctype: ColumnType, value: Any) -> Any:
    """A DATE/DATETIME/TIMESTAMP value (before any zone conversion) from what a path gives."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("ascii", "replace")
    if isinstance(value, str):
        match = _TEMPORAL.match(value)
        if match is None:
            return value
        y, mo, d = (int(match.group(i)) for i in (1, 2, 3))
        clock = None
        if ctype.kind != "date":
            h, mi, s = (int(match.group(i) or 0) for i in (4, 5, 6))
            clock = (h, mi, s, _fraction(int((match.group(7) or "").ljust(6, "0")), ctype.fsp))
        try:
            date = dt.date(y, mo, d)
        except ValueError:
            return _zero_literal((y, mo, d), clock)
        if clock is None:
            return date
        try:
            return dt.datetime.combine(date, dt.time(*clock))
        except ValueError:
            return value
    if ctype.kind == "date":
        return value.date() if isinstance(value, dt.datetime) else value
    if isinstance(value, dt.datetime):
        return value.replace(microsecond=_fraction(value.microsecond, ctype.fsp))
    if isinstance(value, dt.date):
        return dt.datetime.combine(value, dt.time())
    return value


def _timestamp(ctype: ColumnType, value: Any, zone: dt.tzinfo | None) -> Any:
    """A TIMESTAMP in UTC: naive values are wall time of the session's *zone* (None: UTC)."""
    value = _temporal(ctype, value)
    if not isinstance(value, dt.datetime):
        return value
    if value.tzinfo is not None:  # PyMySQL sends an aware value's wall time: so does the server
        value = value.replace(tzinfo=None)
    if zone is not None:
        value = value.replace(tzinfo=zone).astimezone(_UTC).replace(tzinfo=None)
    if value == _EPOCH:  # second 0 is the zero TIMESTAMP
        return _zero_literal((0, 0, 0), (0, 0, 0, 0))
    return value


def _time(ctype: ColumnType, value: Any) -> Any:
    if isinstance(value, dt.time):
        value = dt.timedelta(
            hours=value.hour, minutes=value.minute, seconds=value.second,
            microseconds=value.microsecond,
        )  # fmt: skip
    elif isinstance(value, (str, bytes)):
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        match = _CLOCK.match(text)
        if match is None:
            return value
        sign, days, h, mi, s, frac = match.groups()
        value = dt.timedelta(
            days=int(days or 0), hours=int(h), minutes=int(mi), seconds=int(s or 0),
            microseconds=int((frac or "").ljust(6, "0")),
        )  # fmt: skip
        value = -value if sign else value
    if not isinstance(value, dt.timedelta):
        return value
    micros = value // dt.timedelta(microseconds=1)
    kept = _fraction(abs(micros) % 1_000_000, ctype.fsp) + abs(micros) // 1_000_000 * 1_000_000
    return dt.timedelta(microseconds=-kept if micros < 0 else kept)


def _decimal(ctype: ColumnType, value: Any) -> Any:
    if isinstance(value, float):
        value = Decimal(repr(value))
    elif isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            value = Decimal(value)
        except InvalidOperation:
            return value
    if not isinstance(value, Decimal) or not value.is_finite() or ctype.scale is None:
        return value
    kept = value.quantize(Decimal(1).scaleb(-ctype.scale), rounding=ROUND_HALF_UP, context=_WIDE)
    return kept.copy_abs() if kept.is_zero() else kept


def _bit(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return int.from_bytes(value, "big")
    if isinstance(value, str) and value and set(value) <= {"0", "1"}:
        return int(value, 2)  # python-mysql-replication's string of bits
    return int(value) if isinstance(value, bool) else value


def _choices(ctype: ColumnType, value: Any) -> Any:
    """ENUM/SET members spelled as the definition spells them, SET in definition order."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "surrogateescape")
    lookup = {m.lower(): m for m in ctype.members}
    if ctype.kind == "enum":
        return lookup.get(value.lower(), value) if isinstance(value, str) else value
    if isinstance(value, str):
        items: Iterable[Any] = value.split(",") if value else ()
    elif isinstance(value, (set, frozenset, list, tuple)):
        items = value
    else:
        return value
    chosen = {lookup.get(str(i).lower(), str(i)) for i in items}
    order = {m: n for n, m in enumerate(ctype.members)}
    return ",".join(sorted(chosen, key=lambda m: (order.get(m, len(order)), m)))


def _json(value: Any) -> Any:
    if isinstance(value, (dict, list)):  # MySQL's binary JSON, as the library decodes it
        return _json_tree(value)
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "surrogateescape")
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _json_tree(value: Any) -> Any:
    """A decoded JSON tree with text where python-mysql-replication may leave bytes
    (MySQL 8's binary JSON; written from its documentation, not tested here)."""
    if isinstance(value, dict):
        return {
            _json_tree(k) if isinstance(k, bytes) else k: _json_tree(v) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_json_tree(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value


def _inet(kind: str, value: Any) -> Any:
    size = 16 if kind == "inet6" else 4
    try:
        if isinstance(value, (bytes, bytearray)) and len(value) <= size:
            packed = bytes(value).ljust(size, b"\0")
        elif isinstance(value, (str, ipaddress.IPv4Address, ipaddress.IPv6Address)):
            address = ipaddress.ip_address(value) if isinstance(value, str) else value
            if kind == "inet6" and address.version == 4:
                return value  # MariaDB refuses an IPv4 text in INET6
            packed = address.packed
        else:
            return value
    except ValueError:
        return value
    if size == 4:
        return str(ipaddress.IPv4Address(packed))
    return _inet6_text(packed)


def _inet6_text(packed: bytes) -> str:
    """inet_ntop's text, as MariaDB prints INET6: IPv4-compatible/-mapped tails dotted.

    Python before 3.13 prints ``::ffff:1.2.3.4`` as ``::ffff:102:304``; both name
    one address, but a key must have one spelling.
    """
    words = struct.unpack(">8H", packed)
    if words[:5] == (0,) * 5 and (words[5] == 0xFFFF or (words[5] == 0 and words[6] != 0)):
        tail = str(ipaddress.IPv4Address(packed[12:]))
        return f"::ffff:{tail}" if words[5] else f"::{tail}"
    return ipaddress.IPv6Address(packed).compressed


def _uuid(value: Any) -> Any:
    try:
        if isinstance(value, uuid.UUID):
            return str(value)
        if isinstance(value, (bytes, bytearray)) and len(value) <= 16:
            return str(uuid.UUID(bytes=bytes(value).ljust(16, b"\0")))
        if isinstance(value, str):
            return str(uuid.UUID(value))
    except ValueError:
        pass
    return value


def _binary(ctype: ColumnType, value: Any) -> Any:
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        return data.ljust(ctype.length, b"\0") if ctype.kind == "binary" and ctype.length else data
    return value


def stored(ctype: ColumnType, value: Any, *, zone: dt.tzinfo | None = None) -> Any:
    """*value* of a column of type *ctype* in its stored form (see the module docstring).

    Takes what any path holds: the binlog's values, an ORM's Python values (after
    the ORM's own bind conversion: an ``Enum``'s name, a JSON text), or PyMySQL's
    ``SELECT`` values. *zone* is the session time zone that wrote or reads a
    TIMESTAMP as wall time (``None``: the value is UTC already, as in the binlog).
    ``None`` stays ``None``; a value that does not fit the type is returned
    unchanged (the database would have refused it, so no stored row has it).
    """
    if value is None:
        return None
    if isinstance(value, enum.Enum):
        value = value.value
    kind = ctype.kind
    if kind == "int":
        return int(value) if isinstance(value, bool) else value
    if kind == "float" or kind == "double":
        if isinstance(value, (int, float, Decimal, str)) and not isinstance(value, bool):
            try:
                number = float(value) + 0.0  # a zero has no sign, as for DECIMAL
                return float32(number) if kind == "float" else number
            except (ValueError, OverflowError):
                return value
        return value
    if kind == "decimal":
        return _decimal(ctype, value)
    if kind == "bit":
        return _bit(value)
    if kind == "char":
        return value.rstrip(" ") if isinstance(value, str) else value
    if kind in ("enum", "set"):
        return _choices(ctype, value)
    if kind == "json":
        return _json(value)
    if kind in ("binary", "blob"):
        return _binary(ctype, value)
    if kind in ("date", "datetime"):
        return _temporal(ctype, value)
    if kind == "timestamp":
        return _timestamp(ctype, value, zone)
    if kind == "time":
        return _time(ctype, value)
    if kind in ("inet4", "inet6"):
        return _inet(kind, value)
    if kind == "uuid":
        return _uuid(value)
    return value


# ---------------------------------------------------------------------------------------------
# Rendering stored forms
# ---------------------------------------------------------------------------------------------


def json_text(value: Any) -> str:
    """Canonical JSON: sorted keys, no spaces, non-ASCII as is (one text per JSON value)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=json_value
    )


def _decimal_text(value: Decimal) -> str:
    text = format(value, "f")  # exact: no context rounding, unlike normalize()
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def key_value(value: Any) -> Any:
    """The canonical text (or ``int``) of a stored-form value inside a cache key.

    ``bool`` renders as ``int`` (``TINYINT(1)``), bytes as UTF-8 with undecodable
    bytes kept as lone surrogates, decimals with every digit and no trailing
    fractional zeros (``1.50`` and ``1.5`` are one key), floats with ``repr``,
    temporal values in ISO 8601, ``TIME`` as ``[-]HH:MM:SS[.ffffff]`` (hours may
    pass 24), JSON structures as canonical JSON. ``int`` and ``str`` are returned
    unchanged, so format specs in templates (``{id:08d}``) keep working.
    """
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, enum.Enum):
        return key_value(value.value)
    if isinstance(value, float):
        return repr(value + 0.0)  # -0.0 and 0.0 are one key (the paths disagree on the sign)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="surrogateescape")
    if isinstance(value, Decimal):
        return _decimal_text(value) if value.is_finite() else str(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return _time_of_day(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (dict, list, tuple)):
        return json_text(value)
    if isinstance(value, (set, frozenset)):
        return ",".join(sorted(str(key_value(v)) for v in value))
    return value


def _time_of_day(value: dt.timedelta) -> str:
    """A MySQL ``TIME`` as ``[-]HH:MM:SS[.ffffff]``, the form of ``datetime.time.isoformat()``.

    ``TIME`` spans -838:59:59..838:59:59, so hours may exceed 23 and carry a sign.
    """
    micros = value // dt.timedelta(microseconds=1)
    sign, micros = ("-" if micros < 0 else ""), abs(micros)
    seconds, micro = divmod(micros, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    text = f"{sign}{hours:02d}:{minute:02d}:{second:02d}"
    return f"{text}.{micro:06d}" if micro else text


def json_value(value: Any) -> Any:
    """A stored-form value as the JSON a document carries (what a fresh SELECT gives).

    Decimals become floats (Elasticsearch has no decimal type: a ``double`` field
    keeps no more), temporal values ISO 8601 strings, ``TIME`` as in keys, bytes
    UTF-8 text (undecodable bytes replaced), JSON columns their structure.
    """
    if value is None or isinstance(value, (str, int, float)):
        return value.value if isinstance(value, enum.Enum) else value
    if isinstance(value, enum.Enum):
        return json_value(value.value)
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return _time_of_day(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(json_value(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): json_value(v) for k, v in value.items()}
    return str(value)
