"""Canonical forms of column values, shared by key rendering and documents.

The ORM fast path sees Python values (``True``, ``Decimal('1.50')``, ``Enum``);
the binlog path sees what python-mysql-replication decodes (``1``, ``Decimal``,
``str``). Keys must be identical on both paths, so every value passes through
:func:`key_value` before it is formatted into a key.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from decimal import Decimal
from typing import Any

__all__ = ["json_value", "key_value"]


def key_value(value: Any) -> Any:
    """Return the canonical value used inside a cache key.

    ``bool`` becomes ``int`` (MySQL has no boolean: ``TINYINT(1)`` arrives as 0/1),
    bytes are decoded as UTF-8, enums use their value, decimals are normalised
    (``1.50`` and ``1.5`` are one key), temporal values use ISO 8601 (a ``TIME``
    arriving as ``timedelta`` renders like the ``datetime.time`` the ORM holds).
    Values already canonical (``int``, ``str``) are returned unchanged.
    """
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, enum.Enum):
        return key_value(value.value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="surrogateescape")
    if isinstance(value, Decimal):
        normal = value.normalize()
        return format(normal, "f") if normal == normal.to_integral() else str(normal)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return _time_of_day(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _time_of_day(value: dt.timedelta) -> str:
    """A MySQL ``TIME`` as ``HH:MM:SS[.ffffff]``, the form of ``datetime.time.isoformat()``.

    The binlog (and PyMySQL) deliver ``TIME`` as a ``timedelta`` while the ORM
    holds a ``datetime.time``; both must render the same key. ``TIME`` also
    spans -838:59:59..838:59:59, so hours may exceed 23 and carry a sign.
    """
    micros = value // dt.timedelta(microseconds=1)
    sign, micros = ("-" if micros < 0 else ""), abs(micros)
    seconds, micro = divmod(micros, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    text = f"{sign}{hours:02d}:{minute:02d}:{second:02d}"
    return f"{text}.{micro:06d}" if micro else text


def json_value(value: Any) -> Any:
    """Return *value* in a form the Elasticsearch JSON serializer accepts unchanged.

    Decimals become floats (Elasticsearch has no decimal type), temporal values
    ISO 8601 strings, bytes UTF-8 text, sets sorted lists.
    """
    if value is None or isinstance(value, (str, int, float)):
        return value.value if isinstance(value, enum.Enum) else value
    if isinstance(value, enum.Enum):
        return json_value(value.value)
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(json_value(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    return str(value)
