"""The reverse index of cascades: which child rows hang under which parent value.

A row deleted by ``ON DELETE CASCADE`` is gone before its parent's binlog event
reaches the sidecar, and it never has an event of its own: nobody can read its
keys any more. So the sidecar remembers, for every constraint it follows
(:mod:`.foreignkeys`), each child row under its parent value, with what it needs
once the row is gone: the primary key (to re-read and to name the document's
source), the cache keys and document ids as last rendered, and the values of the
columns that constraints further down reference (grandchildren).

Layout in Redis (one hash per parent value)::

    cachesync:cascade:<pipeline>:<schema.child.constraint>:<parent value JSON>
        field  <child primary key JSON>  ->  entry JSON {"keys": [...], "docs": [[index, id]], "ref": {...}}
    cachesync:cascade:<pipeline>:<schema.child.constraint>:built  ->  fingerprint of the declaration

Redis keeps it across restarts and failovers (the standby reads what the
leader wrote), which an in-memory index rebuilt at start-up cannot: rows a
cascade deleted while the sidecar was down would be missing from it. The
Redis used must not evict these keys (``maxmemory-policy noeviction`` or a
``volatile-*`` policy with TTLs on cache keys). Without a Redis sink the index
lives in memory (:class:`MemoryReverseIndex`) and the start-up log says what
that costs.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..changes import BinlogPosition, GtidPosition, Position
from ..errors import TransientError
from ..valuetags import tag_column_value, untag_column_value

if TYPE_CHECKING:
    from .checkpoint import ResumePoint

__all__ = [
    "MemoryReverseIndex",
    "RedisReverseIndex",
    "ReverseIndex",
    "Session",
    "covered",
    "decode",
    "decode_entry",
    "encode",
    "encode_entry",
]

#: (constraint id, parent value JSON)
Slot = tuple[str, str]
#: ("set", slot, child pk JSON, entry JSON) or ("del", slot, child pk JSON, "")
Write = tuple[str, Slot, str, str]


def encode(values: Mapping[str, Any] | Sequence[Any]) -> str:
    """Canonical, lossless JSON of column values (bytes, decimals, dates tagged)."""
    if isinstance(values, Mapping):
        return json.dumps(
            {k: tag_column_value(v) for k, v in sorted(values.items())}, separators=(",", ":")
        )
    return json.dumps([tag_column_value(v) for v in values], separators=(",", ":"))


def decode(text: str) -> Any:
    """Inverse of :func:`encode`."""
    obj = json.loads(text)
    if isinstance(obj, dict):
        return {k: untag_column_value(v) for k, v in obj.items()}
    return [untag_column_value(v) for v in obj]


class ReverseIndex(ABC):
    """Stores entries per ``(constraint, parent value)``. I/O only, batched.

    Every method raises :class:`TransientError` when the store is unreachable.
    """

    @abstractmethod
    def load(self, slots: Sequence[Slot]) -> dict[Slot, dict[str, str]]:
        """Every entry of each slot (child pk JSON -> entry JSON), one round trip."""

    @abstractmethod
    def write(self, writes: Sequence[Write]) -> None:
        """Apply *writes* in order, one round trip."""

    @abstractmethod
    def fingerprint(self, constraint: str) -> str | None:
        """What :meth:`mark_built` stored for *constraint*, ``None`` before the first build."""

    @abstractmethod
    def mark_built(self, constraint: str, fingerprint: str) -> None: ...

    persistent: bool = True


class RedisReverseIndex(ReverseIndex):
    """:class:`ReverseIndex` in Redis hashes (the layout in the module docstring)."""

    def __init__(self, client: Any, pipeline: str) -> None:
        self.client = client
        self.prefix = f"cachesync:cascade:{pipeline}:"

    def _key(self, slot: Slot) -> str:
        return f"{self.prefix}{slot[0]}:{slot[1]}"

    def _run(self, what: str, fn: Any) -> Any:
        import redis

        try:
            return fn()
        except redis.RedisError as exc:
            raise TransientError(f"cascade index: {what}: {type(exc).__name__}: {exc}") from exc

    def load(self, slots: Sequence[Slot]) -> dict[Slot, dict[str, str]]:
        if not slots:
            return {}

        def go() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for slot in slots:
                pipe.hgetall(self._key(slot))
            return list(pipe.execute())

        replies = self._run("reading", go)
        return {
            slot: {_text(k): _text(v) for k, v in reply.items()}
            for slot, reply in zip(slots, replies, strict=True)
        }

    def write(self, writes: Sequence[Write]) -> None:
        if not writes:
            return

        # Only the last write of a field counts, and fields are independent: one HSET
        # and one HDEL per hash instead of one command per row.
        last: dict[tuple[Slot, str], str | None] = {}
        for op, slot, field, entry in writes:
            last[(slot, field)] = entry if op == "set" else None
        sets: dict[Slot, dict[str, str]] = {}
        dels: dict[Slot, list[str]] = {}
        for (slot, field), value in last.items():
            if value is None:
                dels.setdefault(slot, []).append(field)
            else:
                sets.setdefault(slot, {})[field] = value

        def go() -> None:
            pipe = self.client.pipeline(transaction=False)
            for slot, fields in dels.items():
                pipe.hdel(self._key(slot), *fields)
            for slot, mapping in sets.items():
                pipe.hset(self._key(slot), mapping=mapping)
            pipe.execute()

        self._run("writing", go)

    def fingerprint(self, constraint: str) -> str | None:
        value = self._run("reading", lambda: self.client.get(f"{self.prefix}{constraint}:built"))
        return None if value is None else _text(value)

    def mark_built(self, constraint: str, fingerprint: str) -> None:
        key = f"{self.prefix}{constraint}:built"
        self._run("writing", lambda: self.client.set(key, fingerprint))


class MemoryReverseIndex(ReverseIndex):
    """:class:`ReverseIndex` in a dict: lost with the process, rebuilt at every start."""

    persistent = False

    def __init__(self) -> None:
        self.slots: dict[Slot, dict[str, str]] = {}
        self.built: dict[str, str] = {}

    def load(self, slots: Sequence[Slot]) -> dict[Slot, dict[str, str]]:
        return {slot: dict(self.slots.get(slot, {})) for slot in slots}

    def write(self, writes: Sequence[Write]) -> None:
        for op, slot, field, entry in writes:
            if op == "set":
                self.slots.setdefault(slot, {})[field] = entry
            else:
                self.slots.get(slot, {}).pop(field, None)

    def fingerprint(self, constraint: str) -> str | None:
        return self.built.get(constraint)

    def mark_built(self, constraint: str, fingerprint: str) -> None:
        self.built[constraint] = fingerprint


def _text(value: Any) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


class Session:
    """The reverse index as one batch sees it: loaded slots plus writes in order."""

    def __init__(self, index: ReverseIndex) -> None:
        self.index = index
        self.loaded: dict[Slot, dict[str, str]] = {}
        self.writes: list[Write] = []

    def preload(self, slots: Sequence[Slot]) -> None:
        missing = [s for s in dict.fromkeys(slots) if s not in self.loaded]
        if missing:
            self.flush()
            self.loaded.update(self.index.load(missing))

    def members(self, slot: Slot) -> dict[str, str]:
        self.preload([slot])
        return dict(self.loaded[slot])

    def set(self, slot: Slot, pk: str, entry: str) -> None:
        if slot in self.loaded:
            self.loaded[slot][pk] = entry
        self.writes.append(("set", slot, pk, entry))

    def delete(self, slot: Slot, pk: str) -> None:
        if slot in self.loaded:
            self.loaded[slot].pop(pk, None)
        self.writes.append(("del", slot, pk, ""))

    def flush(self) -> None:
        writes, self.writes = self.writes, []
        self.index.write(writes)


def covered(saved: ResumePoint | None, position: Position | None) -> bool:
    """True once the checkpoint *saved* is past *position* (a replay will not return to it)."""
    if saved is not None and isinstance(position, GtidPosition):
        return (saved.gtid is not None and saved.gtid.contains(position.gtid)) or (
            saved.already_handled(position)
        )
    if saved is None or not isinstance(position, BinlogPosition):
        return position is None
    here, there = BinlogPosition(saved.file, saved.pos).file_index, position.file_index
    if there != here:
        return there < here
    return position.pos <= saved.pos or saved.already_handled(position)


def encode_entry(keys: Sequence[str], docs: Sequence[Sequence[str]], ref: Mapping[str, Any]) -> str:
    """The index entry of one child row (the module docstring's layout)."""
    tagged = {k: tag_column_value(v) for k, v in ref.items()}
    return json.dumps(
        {"keys": list(keys), "docs": [list(d) for d in docs], "ref": tagged}, separators=(",", ":")
    )


def decode_entry(text: str) -> dict[str, Any]:
    """Inverse of :func:`encode_entry`."""
    obj = json.loads(text)
    obj["ref"] = {k: untag_column_value(v) for k, v in obj.get("ref", {}).items()}
    return dict(obj)
