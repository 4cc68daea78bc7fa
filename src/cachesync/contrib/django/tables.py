"""A Django model bound to its :class:`~cachesync.registry.TableSpec`: :class:`DjangoTable`.

What the signal hooks need to read fast-path rows off instances, resolved from
``Model._meta`` (:func:`build_table`): the column map (:func:`column_map`) and,
per column, the normaliser that turns a Python value into the value the
database stores, so into what the binlog shows. On MySQL/MariaDB that is what
Django sends (``field.get_db_prep_value``: aware datetimes made naive in the
connection's zone, JSON serialised, UUIDs as the column takes them) brought to
the stored form of the field's SQL type (``field.db_type``) by
:func:`cachesync.values.stored`, the function the binlog decoder and the read
path use; a ``TIMESTAMP`` is converted from the session's time zone
(:func:`cachesync.binding.session_zone`) to UTC. Custom fields work the same
way, by their ``db_type``. Other databases (SQLite, PostgreSQL: outbox-only)
use the ORM-neutral normalisers of :mod:`cachesync.binding`, picked by field type.

This module imports neither the declarations nor the hooks: both import it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ... import values
from ...binding import (
    needed_attributes,
    session_zone,
    stored_bool,
    stored_decimal,
    stored_enum,
    stored_uuid,
)
from ...errors import DeclarationError
from ...keys import KeyTemplate
from ...registry import TableSpec, resolve
from ...related import relations_of
from ...spec import Sync
from .conf import KeyAffixes

__all__ = ["DjangoTable", "build_table", "column_map", "model_label"]

Normaliser = Callable[[Any, Any], Any]


def _identity(value: Any, connection: Any) -> Any:
    return value


def _plain(value: Any, connection: Any) -> Any:
    # Enum members (TextChoices/IntegerChoices) are stored as their value.
    return stored_enum(value)


def _boolean(value: Any, connection: Any) -> Any:
    return stored_bool(value)


def _uuid(value: Any, connection: Any) -> Any:
    # Without a native UUID type Django stores char(32) hex, which is what the binlog gives.
    return stored_uuid(value, native=bool(connection.features.has_native_uuid_field))


def _datetime(value: Any, connection: Any) -> Any:
    # MySQL DATETIME has no zone: Django stores aware values as naive wall time in the
    # connection's zone (UTC unless DATABASES[...]['TIME_ZONE']), and the binlog returns that.
    if (
        isinstance(value, dt.datetime)
        and value.utcoffset() is not None
        and not connection.features.supports_timezones
    ):
        from django.utils import timezone

        return timezone.make_naive(value, connection.timezone)
    return value


def _decimal(places: int | None) -> Normaliser:
    def normalise(value: Any, connection: Any) -> Any:
        return stored_decimal(value, places)

    return normalise


def _generic(model_field: Any) -> Normaliser:
    """The ORM-neutral normaliser of *model_field* by field type (databases without a binlog)."""
    target = model_field
    while getattr(target, "is_relation", False) and getattr(target, "target_field", None):
        if target.target_field is target:
            break
        target = target.target_field  # a foreign key holds its target's value
    kind = target.get_internal_type()
    if kind in ("BooleanField", "NullBooleanField"):
        return _boolean
    if kind == "UUIDField":
        return _uuid
    if kind == "DateTimeField":
        return _datetime
    if kind == "DecimalField":
        return _decimal(getattr(target, "decimal_places", None))
    return _plain


def _passthrough(model_field: Any) -> type | None:
    """The Python type whose values *model_field* stores unchanged, if any.

    A stock integer field sends an ``int`` as it is (``get_prep_value`` is
    ``int(value)``) into an integer column, and :func:`cachesync.values.stored`
    keeps it; a ``str`` of a stock ``CharField``/``TextField`` goes into a
    ``VARCHAR``/``TEXT`` column, kept as well (a ``CHAR`` column, which drops
    trailing spaces, is no stock field's). Elsewhere than MySQL the generic
    normaliser keeps both too. Every save renders its keys from the primary key:
    this skips the backend's conversion per value. A subclass may convert in
    its own ``get_prep_value``, and an ``IntegerChoices`` member is not an
    ``int`` by type, so only stock classes and exact types qualify.
    """
    from django.db import models

    cls = type(model_field)
    if cls in (
        models.AutoField,
        models.BigAutoField,
        models.SmallAutoField,
        models.IntegerField,
        models.BigIntegerField,
        models.SmallIntegerField,
        models.PositiveIntegerField,
        models.PositiveBigIntegerField,
        models.PositiveSmallIntegerField,
    ):
        return int
    if cls in (models.CharField, models.TextField):
        return str
    return None


def _normaliser(model_field: Any) -> Normaliser:
    """How a Python value of *model_field* becomes the value the database (and binlog) holds.

    A value Django refuses to send (an aware datetime with ``USE_TZ=False``) or a
    type that fails is given to the generic normaliser instead: the binlog path
    still sees the row the database really stored.
    """
    generic = _generic(model_field)
    types: dict[str, values.ColumnType] = {}
    passes = _passthrough(model_field)

    def normalise(value: Any, connection: Any) -> Any:
        if type(value) is passes:
            return value  # what every step below returns for it, without them
        if value is None or connection.vendor != "mysql":
            return generic(value, connection)
        try:
            ctype = types.get(connection.alias)
            if ctype is None:
                ctype = values.column_type(model_field.db_type(connection) or "")
                types[connection.alias] = ctype
            sent = model_field.get_db_prep_value(value, connection, prepared=False)
            zone = None
            if ctype.kind == "timestamp":
                connection.ensure_connection()
                zone = session_zone(connection.connection)
            return values.stored(ctype, sent, zone=zone)
        except Exception:
            return generic(value, connection)

    return normalise


@dataclass(frozen=True)
class DjangoTable:
    """A resolved model: its :class:`TableSpec` and how to read rows for it.

    ``row_attnames`` are the attributes a fast-path row needs
    (:func:`cachesync.binding.needed_attributes`: the template fields, or every
    column when the declaration has ``invalidates``).
    Values are normalised to their database form (:func:`_normaliser`) so that
    keys and rows equal those the binlog sidecar derives from the same change.
    """

    model: Any
    spec: TableSpec
    attnames: tuple[str, ...]
    row_attnames: tuple[str, ...]
    key_names: frozenset[str]  # field names AND attnames of the key fields (update_fields test)
    aliases: tuple[tuple[str, str], ...]
    normalisers: Mapping[str, Normaliser] = field(repr=False)
    #: The templates as declared (``spec.key_templates`` adds their ``make_key`` twins).
    read_templates: tuple[KeyTemplate, ...] = ()

    # Cached: every save asks (a table is immutable; registering again builds a new one).
    @functools.cached_property
    def label(self) -> str:
        return self.spec.model

    @functools.cached_property
    def needs_full_rows(self) -> bool:
        return self.spec.invalidates is not None

    @functools.cached_property
    def keys_follow_pk(self) -> bool:
        """Do the keys name only the primary key (and no ``invalidates()`` reads the row)?

        Then an UPDATE cannot change them: Django updates the row whose pk the
        instance holds (``WHERE pk = instance.pk``; a pk changed in memory writes
        that other row, or inserts it), so the before image names the same keys
        as the after image, and reading it would cost a query for nothing.
        """
        return not self.needs_full_rows and set(self.row_attnames) <= set(self.spec.primary_key)

    def normalise(self, values: Mapping[str, Any], connection: Any) -> dict[str, Any]:
        """A row keyed by attribute (with aliases) from raw Python *values* keyed by attname."""
        norms = self.normalisers
        return self._aliased({a: norms.get(a, _identity)(v, connection) for a, v in values.items()})

    def instance_row(self, instance: Any, connection: Any) -> dict[str, Any]:
        """The row of *instance* as it is in memory (deferred fields are loaded on access).

        :meth:`normalise` of its values, in one pass (every save asks).
        """
        return self._aliased(
            {a: norm(getattr(instance, a), connection) for a, norm in self._row_normalisers}
        )

    def _aliased(self, row: dict[str, Any]) -> dict[str, Any]:
        """*row* with every alias (``pk``, a foreign key's field name) beside its attname."""
        for alias, attname in self.aliases:
            if attname in row:
                row[alias] = row[attname]
        return row

    @functools.cached_property
    def _row_normalisers(self) -> tuple[tuple[str, Normaliser], ...]:
        return tuple((a, self.normalisers.get(a, _identity)) for a in self.row_attnames)

    def fetch_rows(self, using: str, **lookup: Any) -> list[dict[str, Any]]:
        """Rows of the table matching *lookup*, read from the database (one query)."""
        from django.db import connections

        manager = self.model._base_manager.using(using)
        rows = manager.filter(**lookup).values(*self.row_attnames)
        connection = connections[using]
        return [self.normalise(r, connection) for r in rows]


def model_label(model: Any) -> str:
    return f"{model._meta.app_label}.{model._meta.object_name}"


def column_map(model: Any) -> tuple[dict[str, str], list[str]]:
    """``(attribute -> column, primary key attnames)`` of *model*'s own table.

    Names in templates are Django field names, and every name a Django user
    would reach for works on every path:

    * ``attname`` is the canonical attribute of a column (``title``, ``author_id``);
    * a foreign key's field name is an alias of its ``attname``: ``{author}`` and
      ``{author_id}`` both render the id, as in ``filter(author=7)`` (the binlog
      has no related objects to walk, so the id is the only meaning both share);
    * ``pk`` is an alias of the primary key;
    * ``db_column`` only changes the column, never the name used in templates.

    Canonical attnames come first, then aliases (field names that differ from
    their attname, then ``pk``), so the registry takes the attname as canonical.
    Only local fields count: in multi-table inheritance a parent's fields live in
    the parent's table, which the binlog reports separately.
    """
    meta = model._meta
    local = [f for f in meta.local_concrete_fields if getattr(f, "column", None)]
    columns: dict[str, str] = {f.attname: f.column for f in local}
    for f in local:
        if f.name != f.attname and f.name not in columns:
            columns[f.name] = f.column
    pk = meta.pk
    pk_fields = list(getattr(pk, "fields", None) or ()) if pk is not None else []
    if pk_fields:  # Django 5.2 CompositePrimaryKey: no single column, so no {pk} alias
        primary_key = [f.attname for f in pk_fields]
    elif pk is not None and getattr(pk, "column", None):
        primary_key = [pk.attname]
        columns.setdefault("pk", pk.column)
    else:
        primary_key = []
    return columns, primary_key


def _wrapped(sync: Any, wrap_template: Callable[[str], str], wrap: Callable[[str], str]) -> Any:
    """*sync* with a wrapped twin of every key template (``keys=`` and ``depends_on=``) and of
    every ``invalidates()`` key."""
    if not isinstance(sync, Sync) or isinstance(sync.keys, str):
        return sync  # resolve() reports the malformed declaration
    keys = list(sync.keys)
    keys += [wrap_template(k) for k in keys if isinstance(k, str)]
    invalidates = sync.invalidates
    if callable(invalidates):
        inner = invalidates

        def wrapped_invalidates(before: Any, after: Any) -> list[str]:
            found = list(inner(before, after))
            return found + [wrap(k) for k in found]

        invalidates = wrapped_invalidates
    depends_on = sync.depends_on
    if isinstance(depends_on, Mapping):
        # A related row's change must drop the make_key() form the read API stored too.
        depends_on = {
            relation: [*templates, *(wrap_template(k) for k in templates if isinstance(k, str))]
            if isinstance(templates, (list, tuple))
            else templates
            for relation, templates in depends_on.items()
        }
    return dataclasses.replace(sync, keys=keys, invalidates=invalidates, depends_on=depends_on)


def build_table(model: Any, sync: Any, affixes: KeyAffixes | None = None) -> DjangoTable:
    """Resolve *sync* against *model* (no registration). Raises :class:`DeclarationError`.

    With *affixes* (the cache alias's key function is not the identity), every
    declared key also has its ``make_key`` form deleted (:class:`.conf.KeyAffixes`);
    ``read_templates`` keeps the declared ones, which the read API renders.
    """
    meta = model._meta
    label = model_label(model)
    if meta.abstract:
        raise DeclarationError(f"{label}: an abstract model has no table; declare its subclasses")
    if meta.proxy:
        raise DeclarationError(
            f"{label}: is a proxy of {model_label(meta.concrete_model)}; declare that model "
            "(saves through the proxy are synced with it)",
            model=label,
        )
    if getattr(meta, "swapped", None):
        raise DeclarationError(
            f"{label}: is swapped out for {meta.swapped}; declare that model", model=label
        )
    columns, primary_key = column_map(model)
    from .relations import relation_walker  # related data (cachesync.related)

    walker = relation_walker(model)
    declared = resolve(
        label, sync, table=meta.db_table, columns=columns, primary_key=primary_key, walker=walker
    )
    spec = declared
    if affixes is not None and not affixes.identity:
        wrapped = _wrapped(sync, affixes.wrap_template, affixes.wrap)
        spec = resolve(
            label,
            wrapped,
            table=meta.db_table,
            columns=columns,
            primary_key=primary_key,
            walker=walker,
        )
    relations_of(spec)  # models are loaded here: a bad relation fails in ready(), naming the model
    by_column = spec.attributes_by_column
    local = [f for f in meta.local_concrete_fields if getattr(f, "column", None)]
    attnames = tuple(f.attname for f in local)
    key_fields = {by_column[spec.columns[n]] for t in spec.key_templates for n in t.fields}
    row_attnames = needed_attributes(spec, attnames)
    names = {f.attname: f.name for f in local}
    key_names = frozenset(key_fields | {names[a] for a in key_fields})
    aliases = tuple(
        (alias, by_column[column])
        for alias, column in columns.items()
        if by_column[column] != alias
    )
    return DjangoTable(
        model=model,
        spec=spec,
        attnames=attnames,
        row_attnames=row_attnames,
        key_names=key_names,
        aliases=aliases,
        normalisers={f.attname: _normaliser(f) for f in local},
        read_templates=declared.key_templates,
    )
