"""The lossless, JSON-ready form of any column value: what dead letters and the reverse index store.

A row image or a parent value must come back from JSON as the very value the
binlog gave (``bytes``, ``Decimal``, dates, times, sets...), or a redriven
dead letter or a cascade's reverse-index lookup would render other keys. The
types primary keys share use the action codec's tags (:mod:`cachesync.codec`);
this module adds the rest (``$time``, ``$timedelta``, ``$uuid``, ``$set``,
``$object``, and ``$repr`` for what has no lossless form, kept for a human).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

from .codec import UNTAG, tag_value
from .errors import DecodeError

__all__ = ["tag_column_value", "untag_column_value"]


def tag_column_value(value: Any) -> Any:
    """A JSON-ready, lossless form of one column value: the action codec's tags for the
    types primary keys share, and a few more a row image may hold."""
    if isinstance(value, (bytearray, memoryview)):
        value = bytes(value)
    with contextlib.suppress(TypeError):
        return tag_value(value)
    if isinstance(value, dt.time):
        return {"$time": value.isoformat()}
    if isinstance(value, dt.timedelta):
        return {"$timedelta": value // dt.timedelta(microseconds=1)}
    if isinstance(value, uuid.UUID):
        return {"$uuid": str(value)}
    if isinstance(value, (set, frozenset)):
        return {"$set": sorted((tag_column_value(v) for v in value), key=repr)}
    if isinstance(value, (list, tuple)):
        return [tag_column_value(v) for v in value]
    if isinstance(value, dict):
        return {"$object": {str(k): tag_column_value(v) for k, v in value.items()}}
    return {"$repr": repr(value)}  # kept for a human; decodes as the text


_UNTAG: dict[str, Callable[[Any], Any]] = {
    **UNTAG,
    "$time": dt.time.fromisoformat,
    "$timedelta": lambda micros: dt.timedelta(microseconds=int(micros)),
    "$uuid": uuid.UUID,
    "$set": lambda items: {untag_column_value(v) for v in items},
    "$object": lambda obj: {k: untag_column_value(v) for k, v in obj.items()},
    "$repr": str,
}


def untag_column_value(value: Any) -> Any:
    """Inverse of :func:`tag_column_value`; :class:`DecodeError` on a malformed or unknown tag."""
    if isinstance(value, list):
        return [untag_column_value(v) for v in value]
    if isinstance(value, dict):
        if len(value) != 1:
            raise DecodeError(f"malformed tagged value {value!r:.100}")
        ((tag, body),) = value.items()
        if tag not in _UNTAG:
            raise DecodeError(f"unknown value tag {tag!r}")
        return _UNTAG[tag](body)
    return value
