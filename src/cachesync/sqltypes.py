"""What cachesync knows of MySQL/MariaDB column types and sessions, for :mod:`cachesync.values`.

* :class:`ColumnType` / :func:`column_type`: a column's SQL type as the stored-form
  rules need it, parsed from ``information_schema.COLUMNS.COLUMN_TYPE`` or from
  an ORM's DDL, so every path names a type the same way;
* :func:`zone_from`: a session's ``time_zone`` as a ``tzinfo`` (TIMESTAMP wall times);
* :func:`mysql_latin1`: MySQL's ``latin1``, which is not Python's.

Pure: the callers ask the server.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

__all__ = ["ColumnType", "column_type", "mysql_latin1", "zone_from"]

# ---------------------------------------------------------------------------------------------
# Column types
# ---------------------------------------------------------------------------------------------

_INTEGERS = {"tinyint", "smallint", "mediumint", "int", "integer", "bigint", "year", "bool",
             "boolean", "serial"}  # fmt: skip
_TEXTS = {"varchar", "tinytext", "text", "mediumtext", "longtext", "nvarchar", "nchar",
          "character", "long", "string"}  # fmt: skip
_BLOBS = {"varbinary", "tinyblob", "blob", "mediumblob", "longblob"}
_ALIASES = {"double precision": "double", "real": "double", "numeric": "decimal",
            "dec": "decimal", "fixed": "decimal", "char varying": "varchar",
            "character varying": "varchar"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class ColumnType:
    """What :func:`stored` needs to know of a column's SQL type.

    ``kind`` is one of ``int bit decimal float double char text blob binary enum
    set json date datetime timestamp time inet4 inet6 uuid other``; ``members``
    are an ENUM's or SET's values in definition order; ``length`` a BINARY's
    size; ``scale`` a DECIMAL's places; ``fsp`` a temporal type's fractional digits.
    """

    kind: str
    members: tuple[str, ...] = ()
    length: int | None = None
    scale: int | None = None
    fsp: int = 0


_TYPE = re.compile(r"\s*([a-z][a-z0-9]*(?: precision| varying)?)\s*(?:\((.*)\))?", re.I | re.S)


def _members(args: str) -> tuple[str, ...]:
    return tuple(m.replace("''", "'") for m in re.findall(r"'((?:[^']|'')*)'", args))


def column_type(sql: str) -> ColumnType:
    """Parse a column's SQL type as ``information_schema.COLUMNS.COLUMN_TYPE`` or an
    ORM's DDL spells it (``"decimal(10,2)"``, ``"set('a','b')"``, ``"double precision"``,
    ``"timestamp(6)"``, ``"FLOAT(53)"``); unknown types give ``kind="other"`` (kept as is).
    """
    match = _TYPE.match(sql)
    if match is None:
        return ColumnType("other")
    name = _ALIASES.get(match.group(1).lower(), match.group(1).lower())
    args = match.group(2) or ""
    numbers = [int(n) for n in re.findall(r"\d+", args)] if "'" not in args else []
    if name in _INTEGERS:
        return ColumnType("int")
    if name == "bit":
        return ColumnType("bit")
    if name == "decimal":
        return ColumnType("decimal", scale=numbers[1] if len(numbers) > 1 else 0)
    if name == "float":  # FLOAT(p) with p > 24 is a DOUBLE
        return ColumnType("double" if numbers and numbers[0] > 24 else "float")
    if name in ("enum", "set"):
        return ColumnType(name, members=_members(args))
    if name == "char":
        return ColumnType("char")
    if name == "binary":
        return ColumnType("binary", length=numbers[0] if numbers else 1)
    if name in ("datetime", "timestamp", "time"):
        return ColumnType(name, fsp=numbers[0] if numbers else 0)
    if name in _TEXTS:
        return ColumnType("text")
    if name in _BLOBS or name == "bytea":
        return ColumnType("blob")
    if name in ("double", "date", "json", "inet4", "inet6", "uuid"):
        return ColumnType(name)
    return ColumnType("other")


def zone_from(time_zone: str, system_time_zone: str, offset_seconds: int) -> dt.tzinfo:
    """The tzinfo of a MySQL session from ``@@session.time_zone``, ``@@system_time_zone``
    and the current ``TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(), NOW())``.

    ``+08:00`` is a fixed offset; a named zone (``Asia/Shanghai``, or ``SYSTEM``
    naming one) is looked up in the IANA database; a ``SYSTEM`` zone Python does
    not know (an abbreviation like ``CST``) falls back to its current offset,
    which is wrong across a DST change: name the zone in that case.
    """
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    match = re.fullmatch(r"([+-])(\d{1,2}):(\d{2})", time_zone.strip())
    if match:
        sign = -1 if match.group(1) == "-" else 1
        delta = dt.timedelta(hours=int(match.group(2)), minutes=int(match.group(3)))
        return dt.timezone(sign * delta)
    name = system_time_zone if time_zone.upper() == "SYSTEM" else time_zone
    if name.upper() in ("UTC", "GMT", "Z"):
        return dt.UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return dt.timezone(dt.timedelta(seconds=offset_seconds))


# MySQL's latin1 is Windows-1252 with its five holes mapped to the C1 controls.
_CP1252 = {
    b: bytes([b]).decode("cp1252", errors="strict")
    for b in range(0x80, 0xA0)
    if b not in (0x81, 0x8D, 0x8F, 0x90, 0x9D)
}
_LATIN1_FIX = str.maketrans({chr(b): text for b, text in _CP1252.items()})


def mysql_latin1(raw: bytes) -> str:
    """Decode a MySQL ``latin1`` column: cp1252, whose undefined bytes (``0x81``...)
    MySQL maps to U+0081...; Python's cp1252 refuses those, its latin-1 misreads ``€``."""
    return raw.decode("latin-1").translate(_LATIN1_FIX)
