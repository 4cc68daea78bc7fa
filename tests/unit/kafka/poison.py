"""A catalogue of retry records: valid ones, and poison that must cost exactly one dead letter.

Shared by the unit tests (decode, scheduler, consumer with fakes) and the
integration test on the real broker, so both judge the same shapes.

A *poison* is a valid retry message with ONE field replaced (``Poison.path``
names it, ``"action.position"`` for a nested one), or raw bytes that are not a
message at all. *Edge* records look odd but are valid and must be APPLIED:
a key holding lone surrogates from ``surrogateescape`` (a non-UTF-8 VARBINARY
value), an absurd attempt count within bounds, a ``last_failed_at`` in 9999.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from cachesync import BinlogPosition

T0 = dt.datetime(2026, 11, 1, 10, 0, 0, tzinfo=dt.UTC)
POSITION = BinlogPosition("mysql-bin.000003", 1234, 0).encode()


def delete_keys(key: str, *, attempt: int = 0, failed_at: str | None = None) -> dict[str, Any]:
    """A valid retry message (JSON object) deleting *key*."""
    when = failed_at or T0.isoformat().replace("+00:00", "Z")
    return {
        "format": "cachesync.retry",
        "v": 1,
        "key": key,
        "action": {"v": 1, "type": "delete_keys", "keys": [key], "position": POSITION},
        "attempt": attempt,
        "first_failed_at": when,
        "last_failed_at": when,
        "last_error": {"type": "TransientError", "message": "Redis down", "transient": True},
        "origin": {"component": "test"},
    }


def index_doc(doc_id: str = "42", *, attempt: int = 0) -> dict[str, Any]:
    """A valid retry message writing ``users/<doc_id>`` (with a row reference)."""
    return {
        "format": "cachesync.retry",
        "v": 1,
        "key": f"users/{doc_id}",
        "action": {
            "v": 1,
            "type": "index_doc",
            "index": "users",
            "id": doc_id,
            "document": {"name": "ann"},
            "position": POSITION,
            "source": {"schema": "app", "table": "users", "pk": {"id": 42}},
        },
        "attempt": attempt,
        "first_failed_at": "2026-11-01T10:00:00.000Z",
        "last_failed_at": "2026-11-01T10:00:00.000Z",
        "last_error": None,
        "origin": {"component": "test"},
    }


def encode(obj: Any) -> bytes:
    """Record bytes for *obj* (``ensure_ascii``: lone surrogates travel as ``\\udcff`` escapes)."""
    return json.dumps(obj).encode()


def replaced(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of *obj* with the field at dotted *path* set to *value*."""
    out = copy.deepcopy(obj)
    *parents, last = path.split(".")
    node = out
    for name in parents:
        node = node[name]
    node[last] = value
    if path == "action.keys" and isinstance(value, list) and len(value) == 1:
        out["key"] = value[0]  # keep the envelope's key in step: only ONE field is wrong
    return out


@dataclass(frozen=True)
class Poison:
    """One invalid record: *base* (``"keys"`` or ``"doc"``) with *path* set to *value*."""

    name: str
    base: str
    path: str
    value: Any

    def record(self, key: str = "poison") -> bytes:
        obj = delete_keys(key) if self.base == "keys" else index_doc()
        return encode(replaced(obj, self.path, self.value))


#: Every poison shape of the issue, and their neighbours. Each must be one dead letter.
POISONS = [
    # the shapes that crashed (or misrouted) `cachesync retry` on main
    Poison("attempt beyond the bound", "keys", "attempt", 10**7),
    Poison(
        "position beyond the version range",
        "keys",
        "action.position",
        "binlog:mysql-bin.999999:4:0",
    ),
    Poison(
        "position offset beyond 32 bits",
        "keys",
        "action.position",
        "binlog:mysql-bin.000001:4294967296:0",
    ),
    Poison(
        "position without a numeric file suffix", "keys", "action.position", "binlog:mysql-bin:4:0"
    ),
    Poison("key that cannot be re-encoded", "keys", "action.keys", ["user:\ud800"]),
    Poison("key that is not a string", "keys", "action.keys", [42]),
    # neighbours: each field out of range or of the wrong type
    Poison("format", "keys", "format", "cachesync.other"),
    Poison("version true", "keys", "v", True),
    Poison("version 2", "keys", "v", 2),
    Poison("envelope key differs", "keys", "key", "someone-else"),
    Poison("action not an object", "keys", "action", ["delete_keys"]),
    Poison("action version", "keys", "action.v", 2),
    Poison("action type", "keys", "action.type", "drop_table"),
    Poison("two keys", "keys", "action.keys", ["a", "b"]),
    Poison("keys not a list", "keys", "action.keys", "a"),
    Poison("negative offset", "keys", "action.position", "binlog:mysql-bin.000001:-5:0"),
    Poison("version zero", "keys", "action.position", "binlog:mysql-bin.000000:0:0"),
    Poison("outbox id beyond the version range", "keys", "action.position", f"outbox:{2**52}:0"),
    Poison("position not text", "keys", "action.position", 1234),
    Poison("position gibberish", "keys", "action.position", "nowhere"),
    Poison("negative attempt", "keys", "attempt", -1),
    Poison("boolean attempt", "keys", "attempt", True),
    Poison("float attempt", "keys", "attempt", 1.5),
    Poison("huge attempt", "keys", "attempt", 10**40),
    Poison("time not text", "keys", "first_failed_at", 1793000000),
    Poison("time gibberish", "keys", "last_failed_at", "yesterday"),
    Poison("time out of range in UTC", "keys", "first_failed_at", "0001-01-01T00:00:00+01:00"),
    Poison("time past 9999 in UTC", "keys", "last_failed_at", "9999-12-31T23:59:59-01:00"),
    Poison("empty index", "doc", "action.index", ""),
    Poison("index not text", "doc", "action.index", 7),
    Poison("empty id", "doc", "action.id", ""),
    Poison("id that cannot be re-encoded", "doc", "action.id", "\udbff"),
    Poison("document not an object", "doc", "action.document", ["name", "ann"]),
    Poison("document not UTF-8", "doc", "action.document", {"name": "\udcff"}),
    Poison("document position missing", "doc", "action.position", None),
    Poison("source not an object", "doc", "action.source", "users"),
    Poison("source without pk", "doc", "action.source", {"table": "users", "pk": {}}),
    Poison("pk value a list", "doc", "action.source.pk", {"id": [1]}),
    Poison("pk decimal gibberish", "doc", "action.source.pk", {"id": {"$decimal": "abc"}}),
    Poison("pk decimal NaN", "doc", "action.source.pk", {"id": {"$decimal": "sNaN"}}),
    Poison("pk bytes not base64", "doc", "action.source.pk", {"id": {"$bytes": "!!"}}),
    Poison("pk unknown tag", "doc", "action.source.pk", {"id": {"$uuid": "x"}}),
    Poison("pk integer too large", "doc", "action.source.pk", {"id": 2**70}),
]

#: Raw bytes that are no retry message at all.
RAW_POISONS = [
    b"",
    b"\xff\xfe not json",
    b"[1, 2]",
    b'{"format": "cachesync.retry", "v": 1, "attempt": NaN}',
    b"[" * 100_000 + b"]" * 100_000,  # deep enough to exhaust the parser's recursion
]

#: Valid records that look odd; each must be applied, never dead-lettered.
EDGE_KEYS = [
    ("user:\udcff", {}),  # surrogateescape of byte 0xff: applied as the exact bytes
    ("user:\udc80bin\udcfe", {}),
    ("user:absurd-attempt", {"attempt": 5000}),
    ("user:from-9999", {"attempt": 3, "failed_at": "9999-12-31T23:59:59.999Z"}),
]
