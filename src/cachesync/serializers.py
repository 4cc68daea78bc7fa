"""How the read path stores values in Redis: :class:`JsonSerializer` (default), pickle (opt-in).

A serialiser turns a value into bytes and back, and names the *lease marker
prefix* (:mod:`cachesync.leases`) that no value it writes can start with, so a
reader can tell "someone is loading this key" from a value.

* :class:`JsonSerializer` (the default) writes JSON that round-trips what rows
  hold and plain ``json`` cannot: ``Decimal``, ``datetime``, ``date``, ``time``,
  ``timedelta``, ``UUID``, ``bytes``, tuples and model instances of the ORM
  integrations (they register a :class:`ModelCodec` for each declared model, so
  a cached ``Product`` comes back as a ``Product``). It never executes code on
  load, so a writer that can reach the Redis cannot run code in the reader.
* :class:`PickleSerializer` stores anything picklable, opt-in: loading a pickle
  runs code chosen by whoever wrote it.
* :class:`DjangoCacheSerializer` is byte-compatible with Django's built-in
  ``RedisCache`` (integers as digits, everything else pickled), so that values
  the read API writes can be read with ``caches[alias].get(...)``. Its lease
  marker is a valid pickle of ``None``, so a ``cache.get`` that meets a key being
  loaded sees a miss rather than an ``UnpicklingError``.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import pickle
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

from .errors import DecodeError

__all__ = [
    "DjangoCacheSerializer",
    "JsonSerializer",
    "ModelCodec",
    "PickleSerializer",
    "Serializer",
    "model_codec",
    "register_model_codec",
]

#: The lease marker prefix of serialisers whose values never start with a NUL byte.
LEASE_MARKER = b"\x00cachesync-lease:"


@runtime_checkable
class Serializer(Protocol):
    """Bytes for Redis and back. ``marker`` prefixes lease markers; no value may start with it."""

    marker: bytes

    def dumps(self, value: Any) -> bytes:
        """The bytes stored for *value*; raises ``TypeError`` for a value it cannot store."""
        ...

    def loads(self, data: bytes) -> Any:
        """The value *data* holds; raises :class:`~cachesync.errors.DecodeError` when it cannot."""
        ...


@dataclass(frozen=True)
class ModelCodec:
    """How :class:`JsonSerializer` stores instances of one model: as a dict of column values."""

    name: str
    to_fields: Callable[[Any], Mapping[str, Any]]
    from_fields: Callable[[Mapping[str, Any]], Any]


_codecs_lock = threading.Lock()
_codecs_by_class: dict[type, ModelCodec] = {}
_codecs_by_name: dict[str, ModelCodec] = {}


def register_model_codec(model: type, codec: ModelCodec) -> None:
    """Let :class:`JsonSerializer` store instances of *model* (called by the ORM integrations)."""
    with _codecs_lock:
        _codecs_by_class[model] = codec
        _codecs_by_name[codec.name] = codec


def model_codec(model: type) -> ModelCodec | None:
    """The codec for instances of *model* (its own or its nearest registered base's)."""
    for klass in model.__mro__:
        codec = _codecs_by_class.get(klass)
        if codec is not None:
            return codec
    return None


_TAG = "__cachesync__"


def _encode(value: Any) -> Any:
    """*value* as JSON-ready data; non-JSON types become ``{"__cachesync__": tag, "v": ...}``."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return {_TAG: "float", "v": repr(value)}
        return value
    if isinstance(value, Decimal):
        return {_TAG: "decimal", "v": str(value)}
    if isinstance(value, dt.datetime):  # before date: a datetime is a date
        return {_TAG: "datetime", "v": value.isoformat()}
    if isinstance(value, dt.date):
        return {_TAG: "date", "v": value.isoformat()}
    if isinstance(value, dt.time):
        return {_TAG: "time", "v": value.isoformat()}
    if isinstance(value, dt.timedelta):
        return {_TAG: "timedelta", "v": [value.days, value.seconds, value.microseconds]}
    if isinstance(value, uuid.UUID):
        return {_TAG: "uuid", "v": value.hex}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {_TAG: "bytes", "v": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, tuple):
        return {_TAG: "tuple", "v": [_encode(v) for v in value]}
    if isinstance(value, (set, frozenset)):
        return {_TAG: "set", "v": [_encode(v) for v in value]}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and _TAG not in value:
            return {k: _encode(v) for k, v in value.items()}
        return {_TAG: "dict", "v": [[_encode(k), _encode(v)] for k, v in value.items()]}
    codec = model_codec(type(value))
    if codec is not None:
        fields = {k: _encode(v) for k, v in codec.to_fields(value).items()}
        return {_TAG: "model", "m": codec.name, "v": fields}
    raise TypeError(
        f"JsonSerializer cannot store a {type(value).__module__}.{type(value).__qualname__}; "
        "return plain data, declare the model, or opt in to PickleSerializer()"
    )


def _timedelta(parts: list[int]) -> dt.timedelta:
    days, seconds, micro = parts
    return dt.timedelta(days=days, seconds=seconds, microseconds=micro)


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "float": float,
    "decimal": Decimal,
    "datetime": dt.datetime.fromisoformat,
    "date": dt.date.fromisoformat,
    "time": dt.time.fromisoformat,
    "timedelta": _timedelta,
    "uuid": uuid.UUID,
    "bytes": base64.b64decode,
}


def _decode(data: Any) -> Any:
    if isinstance(data, list):
        return [_decode(v) for v in data]
    if not isinstance(data, dict):
        return data
    tag = data.get(_TAG)
    if tag is None:
        return {k: _decode(v) for k, v in data.items()}
    raw = data["v"]
    if tag in _DECODERS:
        return _DECODERS[tag](raw)
    if tag == "tuple":
        return tuple(_decode(v) for v in raw)
    if tag == "set":
        return {_decode(v) for v in raw}
    if tag == "dict":
        return {_decode(k): _decode(v) for k, v in raw}
    if tag == "model":
        codec = _codecs_by_name.get(data["m"])
        if codec is None:
            raise DecodeError(f"cached value holds a {data['m']} but no such model is declared")
        return codec.from_fields({k: _decode(v) for k, v in raw.items()})
    raise DecodeError(f"cached value has an unknown type tag {tag!r}")


class JsonSerializer:
    """JSON with tagged types (see the module docstring); the read path's default."""

    marker = LEASE_MARKER

    def dumps(self, value: Any) -> bytes:
        return json.dumps(_encode(value), separators=(",", ":"), ensure_ascii=False).encode()

    def loads(self, data: bytes) -> Any:
        try:
            return _decode(json.loads(data))
        except DecodeError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise DecodeError(f"cached value is not cachesync JSON: {exc}") from None

    def __repr__(self) -> str:
        return "JsonSerializer()"


class PickleSerializer:
    """Any picklable value. Opt-in: only for a Redis that no untrusted party can write."""

    marker = LEASE_MARKER  # a pickle starts with b"\x80" (protocol >= 2)

    def __init__(self, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
        self.protocol = protocol

    def dumps(self, value: Any) -> bytes:
        return pickle.dumps(value, self.protocol)

    def loads(self, data: bytes) -> Any:
        try:
            return pickle.loads(data)
        except Exception as exc:
            raise DecodeError(f"cached value is not a pickle: {exc}") from None

    def __repr__(self) -> str:
        return f"PickleSerializer(protocol={self.protocol})"


class DjangoCacheSerializer(PickleSerializer):
    """The format of Django's ``RedisCache`` (``django.core.cache.backends.redis.RedisSerializer``).

    ``type(value) is int`` is stored as its digits (so ``cache.incr`` works on it),
    anything else pickled. The lease marker ``b"N."...`` unpickles to ``None``
    (pickle stops at the STOP opcode), so ``cache.get`` reads a key being loaded
    as a miss.
    """

    marker = b"N.cachesync-lease:"

    def dumps(self, value: Any) -> bytes:
        if type(value) is int:
            return str(value).encode()
        return pickle.dumps(value, self.protocol)

    def loads(self, data: bytes) -> Any:
        try:
            return int(data)
        except ValueError:
            return super().loads(data)

    def __repr__(self) -> str:
        return "DjangoCacheSerializer()"
