"""A :class:`~cachesync.spec.Projection` resolved against its model: which rows have a
document, under which id, with which body, and what a row change does to it.

Pure: no I/O. :func:`cachesync.planning.plan` asks each projection of a table for
its document actions; ``reindex`` and ``verify`` render documents through the
same object, so every path writes the same body under the same id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .actions import DeleteDoc, DocumentAction, IndexDoc, RowRef
from .changes import Position
from .keys import KeyTemplate, document_id
from .spec import Projection, Row
from .values import json_value

if TYPE_CHECKING:
    from .tables import TableSpec

__all__ = ["ResolvedProjection"]

#: Types :func:`~cachesync.values.json_value` returns unchanged, by exact type (``bool``
#: and enums take the full path). The sidecar renders a document per row change, so
#: skipping the call for plain values is a measured part of the reading thread's time.
_PLAIN = frozenset({str, int, float, type(None)})
#: Types whose equal values render equal key text (:func:`~cachesync.keys.key_value`
#: returns them unchanged); for others equality does not imply one rendering.
_SAME_TEXT = frozenset({str, int})


@dataclass(frozen=True)
class ResolvedProjection:
    """A :class:`~cachesync.spec.Projection` checked against its model."""

    declared: Projection
    id_template: KeyTemplate
    #: The declared fields (``str`` names) and related fields, read once per document.
    _fields: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _related: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_fields", tuple(self.declared.fields or ()))
        object.__setattr__(self, "_related", tuple(self.declared.related or ()))

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
            return {str(k): json_value(v) for k, v in body.items()}
        plain = _PLAIN
        document = {
            name: v if type(v) in plain else json_value(v)
            for name in self._fields
            for v in (row[name],)
        }
        # Absent only in a plan from a bare row image, which the sidecar re-reads
        # joined before it is written (cachesync.related).
        for name in self._related:
            document[name] = json_value(row.get(name))
        return document

    def live_id(self, spec: TableSpec, row: Row | None) -> str | None:
        """The id of *row*'s document, or ``None`` when it has none (no row, ``when`` false, NULL id)."""
        if row is None or not self.matches(row):
            return None
        return self._id_of(spec, row)

    def _id_of(self, spec: TableSpec, row: Row) -> str | None:
        try:
            return self.doc_id(row)
        except KeyError:
            raise spec.missing(
                row, self.id_template.fields, f"projection {self.index!r} id"
            ) from None

    def _old_id(self, spec: TableSpec, before: Row | None, after: Row, new_id: str) -> str | None:
        """``live_id(spec, before)``, without rendering again when the id fields hold the
        same str/int values as in *after* (an UPDATE that keeps the primary key)."""
        if before is None or not self.matches(before):
            return None
        same = _SAME_TEXT
        for name in self.id_template.fields:
            old, new = before.get(name), after.get(name)
            if type(old) is not type(new) or type(old) not in same or old != new:
                return self._id_of(spec, before)
        return new_id

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
        new_id = self.live_id(spec, after)
        if new_id is None:
            old_id = self.live_id(spec, before)
        else:
            assert after is not None
            old_id = self._old_id(spec, before, after, new_id)
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
