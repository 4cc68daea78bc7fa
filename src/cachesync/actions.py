"""What :func:`cachesync.planning.plan` produces and the applier executes.

Actions are idempotent: deleting a key twice, or writing a document twice with
the same external version, has the effect of doing it once. That is what makes
at-least-once delivery safe everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .changes import Position

__all__ = [
    "Action",
    "DeleteDoc",
    "DeleteKeys",
    "DocumentAction",
    "IndexDoc",
    "RowRef",
    "latest_per_document",
    "per_key",
]


@dataclass(frozen=True)
class RowRef:
    """Which row a document action came from, so a retry can re-read its CURRENT state."""

    schema: str | None
    table: str
    primary_key: Mapping[str, Any]  # column -> value

    def __hash__(self) -> int:
        return hash((self.schema, self.table, tuple(sorted(self.primary_key.items()))))


@dataclass(frozen=True)
class DeleteKeys:
    """Delete cache keys. Order between two deletes of one key does not matter."""

    keys: tuple[str, ...]
    position: Position | None = None


@dataclass(frozen=True)
class IndexDoc:
    """Write *document* as ``index/doc_id`` with external version ``position.version``."""

    index: str
    doc_id: str
    document: Mapping[str, Any] = field(hash=False)
    position: Position
    source: RowRef | None = None

    @property
    def version(self) -> int:
        return self.position.version


@dataclass(frozen=True)
class DeleteDoc:
    """Delete ``index/doc_id`` with external version ``position.version`` (missing is fine)."""

    index: str
    doc_id: str
    position: Position
    source: RowRef | None = None

    @property
    def version(self) -> int:
        return self.position.version


DocumentAction = IndexDoc | DeleteDoc
Action = DeleteKeys | IndexDoc | DeleteDoc


def per_key(action: Action) -> list[Action]:
    """One action per cache key (a document action is already one per document).

    Whatever leaves the applier as a failure is split this way: the retry path is
    keyed, and ordered, per cache key or document.
    """
    if isinstance(action, DeleteKeys) and len(action.keys) != 1:
        return [DeleteKeys((k,), action.position) for k in dict.fromkeys(action.keys)]
    return [action]


def latest_per_document(actions: Iterable[DocumentAction]) -> list[DocumentAction]:
    """Keep only the newest action per ``(index, id)``; later wins on equal versions.

    One bulk request must not carry two writes of one document: the older would
    only produce a 409, and equal (saturated) versions would keep the wrong one.
    """
    latest: dict[tuple[str, str], DocumentAction] = {}
    for action in actions:
        key = (action.index, action.doc_id)
        current = latest.get(key)
        if current is None or action.version >= current.version:
            latest[key] = action
    return list(latest.values())
