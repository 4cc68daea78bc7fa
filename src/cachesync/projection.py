"""A :class:`~cachesync.spec.Projection` resolved against its model: which rows have a
document, under which id, with which body, and what a row change does to it.

Pure: no I/O. :func:`cachesync.planning.plan` asks each projection of a table for
its document actions; ``reindex`` and ``verify`` render documents through the
same object, so every path writes the same body under the same id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .actions import DeleteDoc, DocumentAction, IndexDoc, RowRef
from .changes import Position
from .keys import KeyTemplate, document_id
from .spec import Projection, Row
from .values import json_value

if TYPE_CHECKING:
    from .tables import TableSpec

__all__ = ["ResolvedProjection"]


@dataclass(frozen=True)
class ResolvedProjection:
    """A :class:`~cachesync.spec.Projection` checked against its model."""

    declared: Projection
    id_template: KeyTemplate

    @property
    def index(self) -> str:
        return self.declared.index

    def matches(self, row: Row) -> bool:
        """True when *row* should have a document (its ``when`` holds, or there is none)."""
        when = self.declared.when
        return True if when is None else bool(when(row))

    def doc_id(self, row: Row) -> str | None:
        """The document id of *row*; ``None`` when an id field is NULL (:func:`~cachesync.keys.document_id`)."""
        rendered = self.id_template.render(row)
        return None if rendered is None else document_id(rendered)

    def document(self, row: Row) -> dict[str, Any]:
        """The JSON-ready document body of *row* (pure; no I/O)."""
        if self.declared.to_document is not None:
            body = dict(self.declared.to_document(row))
        else:
            body = {name: row[name] for name in self.declared.fields or ()}
            # Absent only in a plan from a bare row image, which the sidecar re-reads
            # joined before it is written (cachesync.related).
            body.update({name: row.get(name) for name in self.declared.related or ()})
        return {str(k): json_value(v) for k, v in body.items()}

    def live_id(self, spec: TableSpec, row: Row | None) -> str | None:
        """The id of *row*'s document, or ``None`` when it has none (no row, ``when`` false, NULL id)."""
        if row is None or not self.matches(row):
            return None
        try:
            return self.doc_id(row)
        except KeyError:
            raise spec.missing(row, self.id_template.fields, f"projection {self.index!r} id") from None

    def plan(
        self,
        spec: TableSpec,
        before: Row | None,
        after: Row | None,
        position: Position,
        refs: tuple[RowRef | None, RowRef | None],
    ) -> list[DocumentAction]:
        """What a row going from *before* to *after* (rows by attribute) does to its document.

        An :class:`IndexDoc` when the new row has a document; a :class:`DeleteDoc` of
        the old one when the old row had one under another id (or none now).
        *refs* name the source rows of the before and after images for re-reads.
        """
        old_id, new_id = self.live_id(spec, before), self.live_id(spec, after)
        actions: list[DocumentAction] = []
        if new_id is not None:
            assert after is not None
            try:
                document = self.document(after)
            except KeyError:
                if self.declared.fields is None:  # raised inside to_document: the caller reports it
                    raise
                raise spec.missing(
                    after, self.declared.fields, f"projection {self.index!r} fields"
                ) from None
            actions.append(IndexDoc(self.index, new_id, document, position, refs[1]))
        if old_id is not None and old_id != new_id:
            actions.append(DeleteDoc(self.index, old_id, position, refs[0]))
        return actions
