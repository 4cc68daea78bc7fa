"""What :func:`cachesync.planning.plan` produces and the applier executes.

Actions are idempotent: deleting a key twice, or writing a document twice with
the same external version, has the effect of doing it once. That is what makes
at-least-once delivery safe everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .changes import Position

__all__ = ["Action", "DeleteDoc", "DeleteKeys", "DocumentAction", "IndexDoc", "RowRef"]


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
