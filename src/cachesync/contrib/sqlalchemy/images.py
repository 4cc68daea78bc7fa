"""Row images of ORM instances, keyed by attribute name, and the keys they name.

The binlog path renders keys from the row the database stored, translated by
:meth:`TableSpec.row_from_columns`; these functions give the fast path the same
row from an instance at flush time:

* the AFTER image is the instance's current state (values the flush just wrote);
* the BEFORE image comes from attribute history, which still holds the pre-flush
  values inside ``after_flush``: the old username of a rename is
  ``history.deleted``. The declaration turns on ``active_history`` for the
  attributes it reads, so the old value is known even when the attribute was
  expired when it was assigned.

A value the instance cannot tell (an expired attribute of a deleted orphan) is
ABSENT from the image, never guessed: the keys that need it are left to the
binlog path, which sees the real row.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy.orm import InstanceState

from ...fastpath import Collected
from ...planning import template_keys
from ...registry import TableSpec
from .declare import Declared

__all__ = ["after_image", "before_image", "collect_change", "instance_row"]

log = logging.getLogger("cachesync.contrib.sqlalchemy")


def after_image(state: InstanceState[Any], names: Iterable[str]) -> dict[str, Any]:
    """The current values of *names*; unloaded ones are read through the instance.

    Reading is safe here: the row was just written. An expired attribute (a
    server default, an ``onupdate`` value) is loaded, one SELECT for all of
    them; an attribute of a new instance that was never set reads as ``None``,
    which is what the INSERT stored. A value that cannot be read is left out.
    """
    values = state.dict
    obj = state.obj()
    row: dict[str, Any] = {}
    for name in names:
        if name in values:
            row[name] = values[name]
            continue
        if obj is None:
            continue
        try:
            row[name] = getattr(obj, name)
        except Exception as exc:  # unknown stays unknown: the binlog path covers it
            log.debug("cachesync: %s.%s unreadable after flush: %s", state.class_, name, exc)
    return row


def before_image(state: InstanceState[Any], names: Iterable[str]) -> dict[str, Any]:
    """The values *names* had before this flush, from attribute history (no SQL)."""
    row: dict[str, Any] = {}
    for name in names:
        history = state.attrs[name].history
        if history.deleted:
            row[name] = history.deleted[0]
        elif history.unchanged:
            row[name] = history.unchanged[0]
        elif not history.added and name in state.dict:
            row[name] = state.dict[name]
        # else: assigned without the old value ever being loaded -> unknown
    return row


def instance_row(obj: object, declared: Declared) -> dict[str, Any]:
    """Every mapped column attribute of *obj*, keyed by attribute name (tests, tooling)."""
    from sqlalchemy import inspect as sa_inspect

    return after_image(sa_inspect(obj), declared.columns)


def _complete(image: Mapping[str, Any] | None, names: Iterable[str]) -> bool:
    return image is None or all(n in image for n in names)


def collect_change(
    level: Collected,
    declared: Declared,
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
    *,
    intents: bool = True,
) -> None:
    """Add the keys of one row change to *level*; keys needing unknown values are skipped.

    Complete images go through :meth:`Collected.add_change`, the same planning
    functions the binlog path uses. With a value missing, only the templates
    that do not need it are rendered and ``invalidates()`` is not called (it
    would see a partial row); both are logged and left to the binlog path.
    ``intents=False`` renders the templates only: the caller knows just one
    side of an update and must not present it to ``invalidates()`` as a delete.
    """
    spec: TableSpec = declared.spec
    needed = declared.needed
    complete = _complete(before, needed) and _complete(after, needed)
    if complete and intents:
        level.add_change(spec, before, after)
        return
    if complete:
        level.keys.update(dict.fromkeys(template_keys(spec, before, after)))
        return
    for image in (before, after):
        if image is None:
            continue
        for template in spec.key_templates:
            if all(f in image for f in template.fields):
                key = template.render(image)
                if key is not None:
                    level.keys[key] = None
            else:
                log.debug(
                    "cachesync: %s: key %r needs a value the session does not know; "
                    "left to the binlog path",
                    spec.model,
                    template.text,
                )
    if spec.invalidates is not None:
        log.debug(
            "cachesync: %s: invalidates() skipped on the fast path (partial row image); "
            "left to the binlog path",
            spec.model,
        )
