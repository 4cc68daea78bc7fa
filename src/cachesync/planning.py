"""``plan(change, spec) -> [Action]``: the pure heart of cachesync.

No I/O happens here, so the fast path (ORM instance), the binlog sidecar and the
outbox relay all derive the same actions from the same row, and the logic is
tested with generated rows instead of services.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from .actions import Action, DeleteDoc, DeleteKeys, IndexDoc, RowRef
from .changes import RowChange
from .errors import SchemaError
from .registry import TableSpec
from .spec import Row

__all__ = ["intent_keys", "merge_key_deletes", "plan", "plan_keys", "template_keys"]

log = logging.getLogger("cachesync.planning")


def _row_ref(spec: TableSpec, image: Mapping[str, Any]) -> RowRef:
    pk = {column: image.get(column) for column in spec.primary_key_columns()}
    return RowRef(schema=spec.schema, table=spec.table, primary_key=pk)


def _missing(spec: TableSpec, row: Row, names: Iterable[str], what: str) -> SchemaError:
    absent = [n for n in names if n not in row]
    columns = ", ".join(spec.columns[n] for n in absent)
    return SchemaError(
        f"{spec.model}: {what} needs column(s) {columns} but the row image of "
        f"{spec.table!r} has none; was the column dropped or renamed? Fix the declaration "
        "or the table, then restart",
        model=spec.model,
        table=spec.table,
    )


def template_keys(spec: TableSpec, before: Row | None, after: Row | None) -> list[str]:
    """Keys the declared templates name for a row going from *before* to *after*.

    Both images count: an update that renames ``username`` must drop the key of
    the old name as well as the new. A NULL key field skips that key (it cannot
    exist) with an INFO log line. Duplicates are removed, order kept.
    """
    keys: dict[str, None] = {}
    for image in (before, after):
        if image is None:
            continue
        for template in spec.key_templates:
            try:
                key = template.render(image)
            except KeyError:
                raise _missing(spec, image, template.fields, f"key {template.text!r}") from None
            if key is None:
                log.info(
                    "%s: key %r skipped, NULL in %s",
                    spec.model,
                    template.text,
                    ", ".join(template.null_fields(image)),
                )
                continue
            keys[key] = None
    return list(keys)


def intent_keys(spec: TableSpec, before: Row | None, after: Row | None) -> list[str]:
    """Keys the model's ``invalidates(before, after)`` callable asks for (list caches, counts)."""
    if spec.invalidates is None:
        return []
    keys: dict[str, None] = {}
    for key in spec.invalidates(before, after) or ():
        if not isinstance(key, str):
            raise TypeError(f"{spec.model}: invalidates() returned {key!r}, not a str key")
        keys[key] = None
    return list(keys)


def plan_keys(spec: TableSpec, before: Row | None, after: Row | None) -> list[str]:
    """Every key to delete: :func:`template_keys` then :func:`intent_keys`, once each."""
    return list(
        dict.fromkeys(template_keys(spec, before, after) + intent_keys(spec, before, after))
    )


def plan(change: RowChange, spec: TableSpec) -> list[Action]:
    """The actions that make Redis and Elasticsearch reflect *change*.

    * one :class:`DeleteKeys` with the keys of the before AND after images;
    * per projection, an :class:`IndexDoc` when the new row meets ``when``, and a
      :class:`DeleteDoc` of the old document when the old row met ``when`` and
      either the new one does not or the document id changed.

    Document actions need a versioned position; a change without a position
    (the after-commit fast path) yields only key deletes.
    """
    before = spec.row_from_columns(change.before) if change.before is not None else None
    after = spec.row_from_columns(change.after) if change.after is not None else None
    actions: list[Action] = []
    keys = plan_keys(spec, before, after)
    if keys:
        actions.append(DeleteKeys(tuple(keys), change.position))
    if change.position is None:
        return actions
    for projection in spec.projections:
        old_id = new_id = None
        try:
            if before is not None and projection.matches(before):
                old_id = projection.doc_id(before)
            if after is not None and projection.matches(after):
                new_id = projection.doc_id(after)
        except KeyError:
            image = after if after is not None else before
            assert image is not None
            raise _missing(
                spec, image, projection.id_template.fields, f"projection {projection.index!r} id"
            ) from None
        if new_id is not None:
            assert after is not None and change.after is not None
            fields = projection.declared.fields
            try:
                document = projection.document(after)
            except KeyError:
                if fields is None:  # raised inside a to_document callable: the caller reports it
                    raise
                raise _missing(
                    spec, after, fields, f"projection {projection.index!r} fields"
                ) from None
            actions.append(
                IndexDoc(
                    projection.index,
                    new_id,
                    document,
                    change.position,
                    _row_ref(spec, change.after),
                )
            )
        if old_id is not None and old_id != new_id:
            assert change.before is not None
            actions.append(
                DeleteDoc(projection.index, old_id, change.position, _row_ref(spec, change.before))
            )
    return actions


def merge_key_deletes(actions: Iterable[Action]) -> list[str]:
    """Every key of every :class:`DeleteKeys` in *actions*, once each, in first-seen order."""
    keys: dict[str, None] = {}
    for action in actions:
        if isinstance(action, DeleteKeys):
            keys.update(dict.fromkeys(action.keys))
    return list(keys)
