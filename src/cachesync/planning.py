"""``plan(change, spec) -> [Action]``: the pure heart of cachesync.

No I/O happens here, so the fast path (ORM instance), the binlog sidecar and the
outbox relay all derive the same actions from the same row, and the logic is
tested with generated rows instead of services.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from .actions import Action, DeleteKeys
from .changes import RowChange
from .spec import Row
from .tables import TableSpec

__all__ = [
    "add_template_keys",
    "intent_keys",
    "merge_key_deletes",
    "plan",
    "plan_keys",
    "template_keys",
]

log = logging.getLogger("cachesync.planning")


def template_keys(spec: TableSpec, before: Row | None, after: Row | None) -> list[str]:
    """Keys the declared templates name for a row going from *before* to *after*.

    Both images count: an update that renames ``username`` must drop the key of
    the old name as well as the new. A NULL key field skips that key (it cannot
    exist) with an INFO log line. Duplicates are removed, order kept.
    """
    keys: dict[str, None] = {}
    add_template_keys(keys, spec, before, after)
    return list(keys)


def add_template_keys(
    keys: dict[str, None], spec: TableSpec, before: Row | None, after: Row | None
) -> None:
    """:func:`template_keys` into *keys* (a dict used as an ordered set), without the list."""
    for image in (before, after):
        if image is None:
            continue
        for template in spec.key_templates:
            try:
                key = template.render(image)
            except KeyError:
                raise spec.missing(image, template.fields, f"key {template.text!r}") from None
            if key is None:
                log.info(
                    "%s: key %r skipped, NULL in %s",
                    spec.model,
                    template.text,
                    ", ".join(template.null_fields(image)),
                )
                continue
            keys[key] = None


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
    if change.position is None or not spec.projections:
        return actions
    refs = (
        spec.row_ref(change.before) if change.before is not None else None,
        spec.row_ref(change.after) if change.after is not None else None,
    )
    for projection in spec.projections:
        actions.extend(projection.plan(spec, before, after, change.position, refs))
    return actions


def merge_key_deletes(actions: Iterable[Action]) -> list[str]:
    """Every key of every :class:`DeleteKeys` in *actions*, once each, in first-seen order."""
    keys: dict[str, None] = {}
    for action in actions:
        if isinstance(action, DeleteKeys):
            keys.update(dict.fromkeys(action.keys))
    return list(keys)
