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

import datetime as dt
import functools
import logging
from collections.abc import Callable, Iterable, Mapping
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import Enum, Numeric, TypeDecorator, Uuid
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import InstanceState
from sqlalchemy.types import TypeEngine

from ...fastpath import Collected
from ...planning import template_keys
from ...registry import TableSpec
from .declare import Declared

__all__ = [
    "after_image",
    "before_image",
    "collect_change",
    "instance_row",
    "stored_row",
    "stored_value",
]

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


@functools.lru_cache(maxsize=512)
def _bind_processor(type_: TypeEngine[Any], dialect: Dialect) -> Callable[[Any], Any] | None:
    return type_.bind_processor(dialect)


def _fraction_digits(type_: TypeEngine[Any], dialect: Dialect) -> int:
    """Fractional-second digits a MySQL/MariaDB temporal column keeps (``DATETIME(fsp)``)."""
    fsp = getattr(type_.dialect_impl(dialect), "fsp", None)
    return int(fsp) if fsp else 0


def _cut_fraction(value: Any, digits: int, *, round_half_up: bool) -> Any:
    step = 10 ** (6 - digits)
    micro = value.microsecond
    kept = micro - micro % step
    if round_half_up and micro % step >= step // 2:
        if isinstance(value, dt.datetime):
            return value.replace(microsecond=kept) + dt.timedelta(microseconds=step)
        carried = dt.datetime.combine(dt.date(2000, 1, 1), value.replace(microsecond=kept))
        return (carried + dt.timedelta(microseconds=step)).time()
    return value.replace(microsecond=kept)


def stored_value(type_: TypeEngine[Any], value: Any, dialect: Dialect) -> Any:
    """*value* of a column of *type_* as *dialect*'s database stores it (what the binlog shows).

    * ``Enum``, ``Uuid``, ``TypeDecorator``: the type's own bind conversion
      (``Role.ADMIN`` -> ``"ADMIN"``, a UUID on MySQL -> 32 hex digits);
    * ``Numeric(p, s)``: rounded to ``s`` places, half away from zero, as
      MySQL/MariaDB/PostgreSQL store it;
    * MySQL/MariaDB ``DATETIME``/``TIME``: fractional seconds beyond the column's
      precision are cut (MariaDB) or rounded (MySQL's default ``sql_mode``).
    """
    if isinstance(type_, (TypeDecorator, Enum, Uuid)):
        process = _bind_processor(type_, dialect)
        return process(value) if process is not None else value
    if isinstance(value, Decimal) and isinstance(type_, Numeric) and type_.scale is not None:
        if not value.is_finite():
            return value
        return value.quantize(Decimal(1).scaleb(-type_.scale), rounding=ROUND_HALF_UP)
    if (
        dialect.name in ("mysql", "mariadb")
        and isinstance(value, (dt.datetime, dt.time))
        and value.microsecond
    ):
        digits = _fraction_digits(type_, dialect)
        if digits < 6:
            mariadb = bool(getattr(dialect, "is_mariadb", False))
            return _cut_fraction(value, digits, round_half_up=not mariadb)
    return value


def stored_row(
    declared: Declared, row: Mapping[str, Any] | None, dialect: Dialect | None
) -> dict[str, Any] | None:
    """*row* with the values of ``declared.stored_types`` in their stored form.

    Without a dialect, or when a type's conversion fails (a broken custom type
    must not break the flush), the value is kept as is.
    """
    if row is None:
        return None
    converted = dict(row)
    if dialect is None or not declared.stored_types:
        return converted
    for name, type_ in declared.stored_types.items():
        value = converted.get(name)
        if value is None:
            continue
        try:
            converted[name] = stored_value(type_, value, dialect)
        except Exception as exc:
            log.debug("cachesync: %s.%s: stored form unknown: %s", declared.spec.model, name, exc)
    return converted


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
    dialect: Dialect | None = None,
    intents: bool = True,
) -> None:
    """Add the keys of one row change to *level*; keys needing unknown values are skipped.

    Complete images go through :meth:`Collected.add_change`, the same planning
    functions the binlog path uses. With a value missing, only the templates
    that do not need it are rendered and ``invalidates()`` is not called (it
    would see a partial row); both are logged and left to the binlog path.
    ``intents=False`` renders the templates only: the caller knows just one
    side of an update and must not present it to ``invalidates()`` as a delete.
    Values are first put in their stored form (:func:`stored_row`) for *dialect*.
    """
    before, after = stored_row(declared, before, dialect), stored_row(declared, after, dialect)
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
