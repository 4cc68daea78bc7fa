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
from decimal import Decimal
from typing import Any

from sqlalchemy import Enum, Numeric, TypeDecorator, Uuid
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import InstanceState
from sqlalchemy.types import TypeEngine

from ... import binding
from ...binding import stored_decimal, stored_fraction
from ...transactions import Collected
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


def stored_value(type_: TypeEngine[Any], value: Any, dialect: Dialect) -> Any:
    """*value* of a column of *type_* as *dialect*'s database stores it (what the binlog shows).

    * ``Enum``, ``Uuid``, ``TypeDecorator``: the type's own bind conversion
      (``Role.ADMIN`` -> ``"ADMIN"``, a UUID on MySQL -> 32 hex digits);
    * ``Numeric(p, s)``: rounded to ``s`` places, half away from zero, a zero
      without its sign, as MySQL/MariaDB store it (:func:`cachesync.binding.stored_decimal`);
    * MySQL/MariaDB ``DATETIME``/``TIME``: fractional seconds beyond the column's
      precision are cut (MariaDB) or rounded (MySQL's default ``sql_mode``).
    """
    if isinstance(type_, (TypeDecorator, Enum, Uuid)):
        process = _bind_processor(type_, dialect)
        return process(value) if process is not None else value
    if isinstance(value, Decimal) and isinstance(type_, Numeric):
        return stored_decimal(value, type_.scale)
    if (
        dialect.name in ("mysql", "mariadb")
        and isinstance(value, (dt.datetime, dt.time))
        and value.microsecond
    ):
        mariadb = bool(getattr(dialect, "is_mariadb", False))
        digits = _fraction_digits(type_, dialect)
        return stored_fraction(value, digits, round_half_up=not mariadb)
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

    Values are first put in their stored form (:func:`stored_row`) for *dialect*;
    then :func:`cachesync.binding.collect_change` renders them, the rule both
    ORMs share (a partial image renders only the templates it can and skips
    ``invalidates()``; ``intents=False`` renders the templates only).
    """
    before, after = stored_row(declared, before, dialect), stored_row(declared, after, dialect)
    binding.collect_change(level, declared.spec, declared.needed, before, after, intents=intents)
