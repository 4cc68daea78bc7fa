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
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, Enum, Numeric, Table, TypeDecorator, Uuid
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.orm import InstanceState
from sqlalchemy.orm.base import NEVER_SET, NO_VALUE, PassiveFlag
from sqlalchemy.types import TypeEngine

from ... import binding, values
from ...binding import stored_decimal, stored_fraction
from ...transactions import Collected
from ...values import ColumnType
from .declare import Declared

__all__ = [
    "after_image",
    "before_image",
    "changed",
    "collect_change",
    "instance_row",
    "needs_zone",
    "session_zone",
    "stored_row",
    "stored_value",
    "update_images",
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
    """The values *names* had before this flush, from attribute history (no SQL).

    An attribute this flush did not change has no entry in ``committed_state``:
    its history is its current value, unchanged (or nothing when it is not
    loaded), so it is read from the instance's dict without building a
    ``History``. Only the changed ones ask for their history.
    """
    values = state.dict
    committed = state.committed_state
    row: dict[str, Any] = {}
    for name in names:
        if name not in committed:
            if name in values:
                row[name] = values[name]
            continue  # not loaded and not assigned -> unknown
        history = state.attrs[name].history
        if history.deleted:
            row[name] = history.deleted[0]
        elif history.unchanged:
            row[name] = history.unchanged[0]
        elif not history.added and name in values:
            row[name] = values[name]
        # else: assigned without the old value ever being loaded -> unknown
    return row


def update_images(
    state: InstanceState[Any], names: Sequence[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`before_image` then :func:`after_image` of an updated instance.

    When the flush changed none of *names* and all are loaded (the usual update:
    keys name the primary key, a non-key column changed), both images hold the
    same values, so ONE dict is returned as both: :func:`collect_change` then
    converts it once and :func:`cachesync.binding.collect_change` renders it
    once (identity, never equality, is what it tests).
    """
    values = state.dict
    committed = state.committed_state
    for name in names:
        if name in committed or name not in values:
            return before_image(state, names), after_image(state, names)
    row = {name: values[name] for name in names}
    return row, row


def changed(state: InstanceState[Any]) -> bool:
    """``Session.is_modified(obj, include_collections=False)``, from ``committed_state`` alone.

    ``after_update`` fires for dirty instances without net changes (an attribute
    set to the value it had). ``is_modified`` walks every attribute of the class
    to tell; only attributes with an entry in ``committed_state`` can have a
    net change (an untouched scalar's history is "unchanged"), so only those are
    asked. A column attribute is compared here the way its history would
    compare it (``History.from_scalar_attribute``: the type's ``compare_values``
    must say True) without building the ``History``; other scalars (many-to-one)
    ask for their history. Wrong either way costs little: a True too many
    deletes keys for nothing, and the binlog path deletes what a False misses.
    """
    if not state.modified:
        return False
    values = state.dict
    manager = state.manager
    for key, original in state.committed_state.items():
        attr = manager.get(key)
        if attr is None:
            continue
        impl = attr.impl
        if impl.accepts_scalar_loader:  # a column attribute
            current = values.get(key, NO_VALUE)
            if current is NO_VALUE:
                if original is not NO_VALUE and original is not NEVER_SET:
                    return True  # the value was deleted
            elif original is not current and impl.is_equal(current, original) is not True:
                return True
            continue
        if impl.collection or not hasattr(impl, "get_history"):
            continue
        added, _unchanged, deleted = impl.get_history(state, values, passive=PassiveFlag.NO_CHANGE)
        if added or deleted:
            return True
    return False


@functools.lru_cache(maxsize=512)
def _bind_processor(type_: TypeEngine[Any], dialect: Dialect) -> Callable[[Any], Any] | None:
    return type_.bind_processor(dialect)


def _fraction_digits(type_: TypeEngine[Any], dialect: Dialect) -> int:
    """Fractional-second digits a MySQL/MariaDB temporal column keeps (``DATETIME(fsp)``)."""
    fsp = getattr(type_.dialect_impl(dialect), "fsp", None)
    return int(fsp) if fsp else 0


@functools.lru_cache(maxsize=512)
def column_type(type_: TypeEngine[Any], dialect: Dialect) -> ColumnType:
    """The :class:`~cachesync.values.ColumnType` of *type_* as *dialect*'s DDL spells it."""
    try:
        return values.column_type(type_.compile(dialect=dialect))
    except Exception:  # a type this dialect cannot render: keep its values as they are
        return ColumnType("other")


def _mysql(dialect: Dialect) -> bool:
    return dialect.name in ("mysql", "mariadb")


def stored_value(
    type_: TypeEngine[Any], value: Any, dialect: Dialect, zone: dt.tzinfo | None = None
) -> Any:
    """*value* of a column of *type_* as *dialect*'s database stores it (what the binlog shows).

    * ``Enum``, ``Uuid``, ``JSON``, ``TypeDecorator``: first the type's own bind
      conversion (``Role.ADMIN`` -> ``"ADMIN"``, a UUID on MySQL -> 32 hex digits,
      a dict -> its JSON text), as the database receives it;
    * MySQL/MariaDB ``DATETIME``/``TIME``: fractional seconds beyond the column's
      precision rounded half up on MySQL (its default ``sql_mode``);
    * then, on MySQL/MariaDB, :func:`cachesync.values.stored` with the column's
      SQL type (FLOAT as float32, SET in definition order, JSON parsed, a
      TIMESTAMP from the session's *zone* to UTC, ...); elsewhere a ``Numeric``
      is rounded to its scale (:func:`cachesync.binding.stored_decimal`).
    """
    if isinstance(type_, (TypeDecorator, Enum, Uuid, JSON)):
        process = _bind_processor(type_, dialect)
        value = process(value) if process is not None else value
    if not _mysql(dialect):
        if isinstance(value, Decimal) and isinstance(type_, Numeric):
            return stored_decimal(value, type_.scale)
        return value
    mariadb = bool(getattr(dialect, "is_mariadb", False))
    if isinstance(value, (dt.datetime, dt.time)) and value.microsecond and not mariadb:
        value = stored_fraction(value, _fraction_digits(type_, dialect), round_half_up=True)
    return values.stored(column_type(type_, dialect), value, zone=zone)


def _zone(connection: Connection | None) -> dt.tzinfo | None:
    """The session time zone of *connection* (None: unknown, values taken as UTC)."""
    if connection is None:
        return None
    try:
        return binding.session_zone(connection.connection.dbapi_connection)
    except Exception as exc:  # a failed lookup must not break the flush
        log.debug("cachesync: session time zone unknown: %s", exc)
        return None


def needs_zone(declared: Declared, dialect: Dialect | None) -> bool:
    """Whether *declared* has a MySQL/MariaDB ``TIMESTAMP`` column: only then does
    :func:`stored_row` ask the connection for its session time zone."""
    if dialect is None or not _mysql(dialect):
        return False
    return _has_timestamp(declared.table, dialect)


@functools.lru_cache(maxsize=512)
def _has_timestamp(table: Table, dialect: Dialect) -> bool:
    # Per table and dialect, once: asked at every flush that wrote a declared row.
    return any(column_type(c.type, dialect).kind == "timestamp" for c in table.columns)


def session_zone(declared: Declared, connection: Connection | None) -> dt.tzinfo | None:
    """*connection*'s session time zone if *declared* has a ``TIMESTAMP`` column, else None.

    The answer is cached per DBAPI connection, so asking early (before a statement
    whose streaming result holds the connection) makes later lookups free.
    """
    if connection is None or not _mysql(connection.dialect):
        return None
    dialect = connection.dialect
    if any(column_type(c.type, dialect).kind == "timestamp" for c in declared.columns.values()):
        return _zone(connection)
    return None


#: A column's stored-form conversion, ``(value, zone) -> stored``, and whether it is a
#: MySQL/MariaDB TIMESTAMP (only then is the session's time zone asked for).
_Convert = Callable[[Any, "dt.tzinfo | None"], Any]
_forms: dict[tuple[int, int], tuple[Declared, Dialect, dict[str, tuple[_Convert, bool]]]] = {}
_forms_lock = threading.Lock()


def _converter(type_: TypeEngine[Any], dialect: Dialect) -> tuple[_Convert, bool]:
    """:func:`stored_value` for one column with its per-type lookups done once.

    The same steps in the same order; only the ``lru_cache`` and ``isinstance``
    work that depends on the type alone moves here. A type whose lookups fail
    keeps :func:`stored_value` itself, so it fails (and is logged) per value as before.
    """
    try:
        timestamp = _mysql(dialect) and column_type(type_, dialect).kind == "timestamp"
    except Exception:
        timestamp = False
    try:
        process = (
            _bind_processor(type_, dialect)
            if isinstance(type_, (TypeDecorator, Enum, Uuid, JSON))
            else None
        )
        if not _mysql(dialect):
            scale = type_.scale if isinstance(type_, Numeric) else _NOT_NUMERIC

            def generic(value: Any, zone: dt.tzinfo | None) -> Any:
                if process is not None:
                    value = process(value)
                if scale is not _NOT_NUMERIC and isinstance(value, Decimal):
                    return stored_decimal(value, scale)
                return value

            return generic, timestamp
        mariadb = bool(getattr(dialect, "is_mariadb", False))
        ctype = column_type(type_, dialect)
        digits = None if mariadb else _fraction_digits(type_, dialect)
        stored = values.stored

        def mysql(value: Any, zone: dt.tzinfo | None) -> Any:
            if process is not None:
                value = process(value)
            if digits is not None and isinstance(value, (dt.datetime, dt.time)) and value.microsecond:
                value = stored_fraction(value, digits, round_half_up=True)
            return stored(ctype, value, zone=zone)

        return mysql, timestamp
    except Exception:

        def fallback(value: Any, zone: dt.tzinfo | None) -> Any:
            return stored_value(type_, value, dialect, zone)

        return fallback, timestamp


_NOT_NUMERIC: Any = object()


def _form(declared: Declared, dialect: Dialect) -> dict[str, tuple[_Convert, bool]]:
    """The converters of *declared*'s columns for *dialect*, built at its first flush."""
    key = (id(declared), id(dialect))
    cached = _forms.get(key)
    if cached is not None and cached[0] is declared and cached[1] is dialect:
        return cached[2]
    form = {name: _converter(column.type, dialect) for name, column in declared.columns.items()}
    with _forms_lock:
        # Holding both keeps their ids from being reused by other objects while cached.
        _forms[key] = (declared, dialect, form)
    return form


def stored_row(
    declared: Declared,
    row: Mapping[str, Any] | None,
    dialect: Dialect | None,
    connection: Connection | None = None,
) -> dict[str, Any] | None:
    """*row* with its values in their stored form (:func:`stored_value`).

    A ``TIMESTAMP`` is converted from *connection*'s session time zone to UTC,
    as the server stores it. Without a dialect, or when a type's conversion
    fails (a broken custom type must not break the flush), the value is kept.
    """
    if row is None:
        return None
    converted = dict(row)
    if dialect is None:
        return converted
    form = _form(declared, dialect)
    zone: dt.tzinfo | None = None
    zone_known = False
    for name, value in row.items():
        if value is None:
            continue
        entry = form.get(name)
        if entry is None:
            continue
        convert, timestamp = entry
        try:
            if timestamp and not zone_known:
                zone, zone_known = _zone(connection), True
            converted[name] = convert(value, zone)
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
    connection: Connection | None = None,
    intents: bool = True,
) -> None:
    """Add the keys of one row change to *level*; keys needing unknown values are skipped.

    Values are first put in their stored form (:func:`stored_row`) for *dialect*
    (a TIMESTAMP from *connection*'s session time zone to UTC);
    then :func:`cachesync.binding.collect_change` renders them, the rule both
    ORMs share (a partial image renders only the templates it can and skips
    ``invalidates()``; ``intents=False`` renders the templates only).
    """
    same = before is after
    before = stored_row(declared, before, dialect, connection)
    if not same:
        after = stored_row(declared, after, dialect, connection)
    elif declared.spec.invalidates is not None:
        after = None if before is None else dict(before)  # a user callable gets two rows
    else:
        after = before
    binding.collect_change(level, declared.spec, declared.needed, before, after, intents=intents)
