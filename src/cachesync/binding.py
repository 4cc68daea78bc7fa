"""How an ORM model binds to its :class:`TableSpec` on the fast path, shared by both ORMs.

The binlog path renders keys from the row the database stored; the fast path
renders them from an ORM instance. For both to name the same bytes
(guarantee 9), the rules below are the same for SQLAlchemy and Django:

* :func:`needed_attributes`: which attributes a fast-path row image must hold;
* the stored-form normalisers (:func:`stored_decimal`, :func:`stored_bool`,
  :func:`stored_uuid`, :func:`stored_enum`, :func:`stored_fraction`): a Python
  value as MySQL/MariaDB keeps it, so as the binlog shows it; on MySQL/MariaDB
  both ORMs then hand every value to :func:`cachesync.values.stored` with the
  column's SQL type, the function the binlog decoder and the read path use;
* :func:`session_zone`: the time zone a MySQL session reads and writes
  ``TIMESTAMP`` wall times in, which the ORM paths convert to UTC;
* :func:`collect_change`: the keys of one change, also when an image is partial
  (a value the ORM cannot tell is left to the binlog path, never guessed).

Each integration maps its column types onto these normalisers; nothing here
imports an ORM.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import logging
import uuid
import weakref
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from . import values
from .planning import add_template_keys
from .tables import TableSpec
from .transactions import Collected

__all__ = [
    "collect_change",
    "needed_attributes",
    "session_zone",
    "stored_bool",
    "stored_decimal",
    "stored_enum",
    "stored_fraction",
    "stored_uuid",
]

log = logging.getLogger("cachesync.binding")


def needed_attributes(spec: TableSpec, attributes: Sequence[str]) -> tuple[str, ...]:
    """The attributes (of *attributes*, the model's columns, in order) a fast-path row needs.

    Every column when the declaration has ``invalidates()``: the callable may
    read any of them, and it must see the same row on every path. Otherwise the
    canonical attributes the key templates name (an alias such as Django's
    ``pk`` or a foreign key's field name counts as its attribute).
    """
    if spec.invalidates is not None:
        return tuple(attributes)
    by_column = spec.attributes_by_column
    fields = {by_column[spec.columns[f]] for t in spec.key_templates for f in t.fields}
    return tuple(a for a in attributes if a in fields)


# ---------------------------------------------------------------------------------------------
# Stored forms
# ---------------------------------------------------------------------------------------------


def stored_decimal(value: Any, places: int | None) -> Any:
    """A decimal as a ``DECIMAL(p, places)`` column stores it.

    The column keeps *places* digits, rounding the excess half away from zero
    (``ROUND_HALF_UP``), and a stored zero has no sign: MariaDB and MySQL give
    ``-0.00`` (or ``-0.004`` rounded) back as ``0.00``, so ``0.00`` is the one
    canonical form. Non-decimals, NaN/infinity and unknown scales pass unchanged.
    """
    if places is None or not isinstance(value, Decimal) or not value.is_finite():
        return value
    return values.stored(values.ColumnType("decimal", scale=places), value)


def stored_bool(value: Any) -> Any:
    """MySQL has no boolean: ``TINYINT(1)`` holds (and the binlog shows) 0/1."""
    return int(value) if isinstance(value, bool) else value


def stored_uuid(value: Any, *, native: bool) -> Any:
    """A UUID as a native UUID column shows it (text), else as ``CHAR(32)`` hex digits."""
    if isinstance(value, uuid.UUID):
        return str(value) if native else value.hex
    return value


def stored_enum(value: Any, *, by_name: bool = False) -> Any:
    """An enum member as stored: its value (Django choices), or its NAME (SQLAlchemy ``Enum``)."""
    if isinstance(value, enum.Enum):
        return value.name if by_name else value.value
    return value


def stored_fraction(value: Any, digits: int, *, round_half_up: bool) -> Any:
    """A ``DATETIME``/``TIME`` value with the fractional seconds its column keeps.

    A column of *digits* (``fsp``) fractional digits cuts the rest (MariaDB) or
    rounds it half up (MySQL's default ``sql_mode``).
    """
    if not isinstance(value, (dt.datetime, dt.time)) or not value.microsecond or digits >= 6:
        return value
    step = 10 ** (6 - digits)
    micro = value.microsecond
    kept = micro - micro % step
    if round_half_up and micro % step >= step // 2:
        if isinstance(value, dt.datetime):
            return value.replace(microsecond=kept) + dt.timedelta(microseconds=step)
        carried = dt.datetime.combine(dt.date(2000, 1, 1), value.replace(microsecond=kept))
        return (carried + dt.timedelta(microseconds=step)).time()
    return value.replace(microsecond=kept)


_ZONE_SQL = (
    "SELECT @@session.time_zone, @@system_time_zone, TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(), NOW())"
)
_zones: weakref.WeakKeyDictionary[Any, dt.tzinfo] = weakref.WeakKeyDictionary()


def session_zone(dbapi_connection: Any) -> dt.tzinfo:
    """The time zone *dbapi_connection*'s session reads and writes ``TIMESTAMP`` wall times in.

    The binlog carries a ``TIMESTAMP`` as UTC; an ORM holds (and writes) wall time
    in the session's ``time_zone`` (Django with ``USE_TZ=False``, SQLAlchemy
    always; Django with ``USE_TZ=True`` writes UTC wall time, which the server
    still reads in the session's zone). Asked once per DBAPI connection, so set
    the zone when the connection opens (``init_command``, a connect event), not
    halfway through its life. See :func:`cachesync.values.zone_from`.
    """
    try:
        return _zones[dbapi_connection]
    except (KeyError, TypeError):
        pass
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(_ZONE_SQL)
        name, system, offset = cursor.fetchone()
    finally:
        cursor.close()
    zone = values.zone_from(str(name), str(system), int(offset))
    # A driver connection that takes no weak references is asked every time.
    with contextlib.suppress(TypeError):
        _zones[dbapi_connection] = zone
    return zone


# ---------------------------------------------------------------------------------------------
# Keys of one change
# ---------------------------------------------------------------------------------------------


def _complete(image: Mapping[str, Any] | None, names: Iterable[str]) -> bool:
    # map() of the bound __contains__: no generator frame per call (twice per change)
    return image is None or all(map(image.__contains__, names))


def collect_change(
    level: Collected,
    spec: TableSpec,
    needed: Sequence[str],
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
    *,
    intents: bool = True,
) -> None:
    """Add the keys of one row change (images in stored form) to *level*.

    Complete images go through :meth:`Collected.add_change`, the same planning
    functions the binlog path uses. With a *needed* value missing, only the
    templates that do not need it are rendered and ``invalidates()`` is not
    called (it would see a partial row); both are logged and left to the binlog
    path. ``intents=False`` renders the templates only: the caller knows just one
    side of an update and must not present it to ``invalidates()`` as a delete.
    """
    if before is after and spec.invalidates is None:
        # One image given as both (Django: the update touched no key field): render it once.
        # Identity, not equality: values can compare equal and still render apart.
        before = None
    complete = _complete(before, needed) and _complete(after, needed)
    if complete and intents:
        level.add_change(spec, before, after)
        return
    if complete:
        add_template_keys(level.keys, spec, before, after)
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
