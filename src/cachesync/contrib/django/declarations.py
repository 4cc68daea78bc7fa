"""Declarations on Django models: the :class:`CacheSyncModel` mixin and :func:`register`.

A declaration is resolved against ``Model._meta`` into a
:class:`~cachesync.registry.TableSpec` (the ORM-neutral form the binlog sidecar
and the retry consumer use) plus a :class:`DjangoTable` (what the signal hooks
need to read rows off instances).

Names in templates are Django field names. The column map is built so that
every name a Django user would reach for works on every path:

* ``attname`` is the canonical attribute of a column (``title``, ``author_id``);
* a foreign key's field name is an alias of its ``attname``: ``{author}`` and
  ``{author_id}`` both render the id, as in ``filter(author=7)`` (the binlog has
  no related objects to walk, so the id is the only meaning both paths share);
* ``pk`` is an alias of the primary key;
* ``db_column`` only changes the column, never the name used in templates.

Resolution needs the app registry, so it happens in ``AppConfig.ready()`` (or
at once when :func:`register` is called later). Errors found during ``ready()``
are collected and reported by ``manage.py check`` as ``cachesync.E001``; an
error in a :func:`register` call made after start-up raises
:class:`~cachesync.errors.DeclarationError` at the call.
"""

from __future__ import annotations

import datetime as dt
import enum
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, ClassVar

from ...errors import DeclarationError
from ...planning import template_keys
from ...registry import Registry, TableSpec, default_registry, resolve
from ...spec import Invalidates, Projection, Sync

__all__ = [
    "CacheSyncModel",
    "DeclarationProblem",
    "DjangoTable",
    "register",
    "table_for",
    "tables",
    "unregister",
]

Normaliser = Callable[[Any, Any], Any]


class CacheSyncModel:
    """Mixin for models you own: ``class Article(CacheSyncModel, models.Model)``.

    Put the declaration in ``__cachesync__ = Sync(keys=[...], search=Projection(...))``.
    A plain mixin rather than an abstract model, so it never fights Django's model
    metaclass, needs no app of its own at import time and combines with any
    abstract base. The app discovers mixin models in ``ready()``; a model that
    has ``__cachesync__`` WITHOUT the mixin is ignored with warning
    ``cachesync.W001`` (a stray attribute should not start syncing a table).
    """

    __cachesync__: ClassVar[Sync]
    # Migrations of models using the mixin record their bases by module path: point them
    # at the documented import, which stays put whatever happens inside the package.
    __module__ = "cachesync.contrib.django"

    def cachesync_keys(self) -> list[str]:
        """The cache keys of this instance's current (in-memory) field values.

        Useful for read-through caching (``cached(article.cachesync_keys()[0], ...)``)
        and in tests. Raises :class:`DeclarationError` if the model is not resolved.
        """
        table = table_for(type(self))
        if table is None:
            raise DeclarationError(
                f"{type(self).__name__} is not a resolved cachesync model; is "
                "'cachesync.contrib.django' in INSTALLED_APPS and does 'manage.py check' pass?"
            )
        from django.db import connections, router

        connection = connections[router.db_for_write(type(self), instance=self)]
        return template_keys(table.spec, None, table.instance_row(self, connection))


@dataclass(frozen=True)
class DeclarationProblem:
    """A declaration that failed to resolve during start-up (reported as ``cachesync.E001``)."""

    message: str
    model: Any = None  # the model class when known, else None
    where: str = ""  # the module, for errors raised while importing an app's cachesync.py
    id: str = "cachesync.E001"
    error: bool = True
    hint: str | None = None


def _identity(value: Any, connection: Any) -> Any:
    return value


def _plain(value: Any, connection: Any) -> Any:
    # Enum members (TextChoices/IntegerChoices) are stored as their value.
    return value.value if isinstance(value, enum.Enum) else value


def _boolean(value: Any, connection: Any) -> Any:
    # MySQL has no boolean: the binlog gives TINYINT(1) as 0/1.
    return int(value) if isinstance(value, bool) else value


def _uuid(value: Any, connection: Any) -> Any:
    # Without a native UUID type Django stores char(32) hex, which is what the binlog gives.
    if isinstance(value, uuid.UUID):
        return str(value) if connection.features.has_native_uuid_field else value.hex
    return value


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
    quantum = Decimal(1).scaleb(-places) if places is not None else None

    def normalise(value: Any, connection: Any) -> Any:
        # The column keeps decimal_places digits; an instance may hold more until reloaded.
        # MySQL rounds the excess half away from zero, which is ROUND_HALF_UP.
        # A stored zero has no sign: -0.00 comes back as 0.00.
        if quantum is not None and isinstance(value, Decimal) and value.is_finite():
            stored = value.quantize(quantum, rounding=ROUND_HALF_UP)
            return stored.copy_abs() if stored.is_zero() else stored
        return value

    return normalise


def _normaliser(model_field: Any) -> Normaliser:
    """How a Python value of *model_field* becomes the value the database (and binlog) holds."""
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


@dataclass(frozen=True)
class DjangoTable:
    """A resolved model: its :class:`TableSpec` and how to read rows for it.

    ``row_attnames`` are the attributes a fast-path row needs: the template
    fields, or every column when the declaration has ``invalidates`` (the
    callable may read any of them, and it must see the same row on every path).
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

    @property
    def label(self) -> str:
        return self.spec.model

    @property
    def needs_full_rows(self) -> bool:
        return self.spec.invalidates is not None

    def normalise(self, values: Mapping[str, Any], connection: Any) -> dict[str, Any]:
        """A row keyed by attribute (with aliases) from raw Python *values* keyed by attname."""
        norms = self.normalisers
        row = {a: norms.get(a, _identity)(v, connection) for a, v in values.items()}
        for alias, attname in self.aliases:
            if attname in row:
                row[alias] = row[attname]
        return row

    def instance_row(self, instance: Any, connection: Any) -> dict[str, Any]:
        """The row of *instance* as it is in memory (deferred fields are loaded on access)."""
        return self.normalise({a: getattr(instance, a) for a in self.row_attnames}, connection)

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


def build_table(model: Any, sync: Any) -> DjangoTable:
    """Resolve *sync* against *model* (no registration). Raises :class:`DeclarationError`."""
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
    spec = resolve(label, sync, table=meta.db_table, columns=columns, primary_key=primary_key)
    by_column = spec.attributes_by_column
    local = [f for f in meta.local_concrete_fields if getattr(f, "column", None)]
    attnames = tuple(f.attname for f in local)
    key_fields = {by_column[spec.columns[n]] for t in spec.key_templates for n in t.fields}
    row_attnames = (
        attnames if spec.invalidates is not None else tuple(a for a in attnames if a in key_fields)
    )
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
    )


# ----------------------------------------------------------------------------------------
# Process-wide state: what was declared, what resolved, what went wrong
# ----------------------------------------------------------------------------------------


@dataclass
class _State:
    registry: Registry = field(default_factory=lambda: default_registry)
    # model -> (sync, origin) for register() calls; origin says where, for messages
    registered: dict[Any, tuple[Sync, str]] = field(default_factory=dict)
    tables: dict[Any, DjangoTable] = field(default_factory=dict)
    problems: list[DeclarationProblem] = field(default_factory=list)
    discovering: bool = False
    ready: bool = False
    lock: threading.RLock = field(default_factory=threading.RLock)


state = _State()


def tables() -> dict[Any, DjangoTable]:
    """Resolved models (concrete model class -> :class:`DjangoTable`)."""
    with state.lock:
        return dict(state.tables)


def table_for(model: Any) -> DjangoTable | None:
    """The :class:`DjangoTable` of *model* (or of the concrete model of a proxy)."""
    meta = getattr(model, "_meta", None)
    concrete = meta.concrete_model if meta is not None else model
    return state.tables.get(concrete)


def _caller_origin() -> str:
    import inspect

    frame = inspect.currentframe()
    try:
        caller = frame.f_back.f_back if frame and frame.f_back else None
        return str(caller.f_globals.get("__name__", "?")) if caller else "?"
    finally:
        del frame


def register(
    model: Any,
    sync: Sync | None = None,
    *,
    keys: Sequence[str] = (),
    search: Projection | Sequence[Projection] | None = None,
    invalidates: Invalidates | None = None,
) -> TableSpec | None:
    """Declare what to keep in sync for a model you do not own (``auth.User``, a through model).

    ``register(User, keys=["user:{pk}", "user:by-name:{username}"])``, or
    ``register(User, Sync(...))`` with a declaration shared elsewhere (the same
    two forms as :func:`cachesync.contrib.sqlalchemy.register`). Same meaning as
    ``__cachesync__ = Sync(...)`` on a :class:`CacheSyncModel`. Call it from a
    ``cachesync.py`` module in any installed app (discovered at start-up), or at
    any time after start-up. Many-to-many changes are synced by registering the
    through model: ``register(Article.tags.through, keys=["article:{article_id}"])``.

    Returns the resolved :class:`TableSpec`, or ``None`` when called before the
    models are loaded (it is resolved in ``ready()`` then). During start-up an
    invalid declaration is reported by ``manage.py check`` (``cachesync.E001``);
    after start-up it raises :class:`DeclarationError`.
    """
    from django.db.models import Model

    if not (isinstance(model, type) and issubclass(model, Model)):
        raise DeclarationError(f"register() expects a Django model class, got {model!r}")
    if sync is None:
        sync = Sync(keys=keys, search=search, invalidates=invalidates)
    elif keys or search is not None or invalidates is not None:
        raise DeclarationError(
            f"{model_label(model)}: give either a Sync(...) or keys=/search=/invalidates=, "
            "not both",
            model=model_label(model),
        )
    origin = _caller_origin()
    from django.apps import apps

    with state.lock:
        previous = state.registered.get(model)
        state.registered[model] = (sync, origin)
        if not apps.models_ready:
            return None  # resolved by ready()
        try:
            table = _resolve_one(model, sync)
        except DeclarationError as exc:
            if previous is None:
                state.registered.pop(model, None)
            else:  # a bad re-declaration leaves the working one in place
                state.registered[model] = previous
            if state.discovering:
                state.problems.append(DeclarationProblem(str(exc), model=model, where=origin))
                return None
            raise
        if state.ready:
            from . import hooks

            hooks.connect(state.tables)
        return table.spec


def unregister(model: Any) -> None:
    """Forget a model's declaration (tests, plug-ins that switch syncing off)."""
    with state.lock:
        state.registered.pop(model, None)
        table = state.tables.pop(model, None)
        if table is not None:
            state.registry.remove(table.spec)
        if state.ready:
            from . import hooks

            hooks.connect(state.tables)


def _resolve_one(model: Any, sync: Any) -> DjangoTable:
    table = build_table(model, sync)
    existing = state.tables.get(model)
    if existing is not None and existing.spec.table == table.spec.table:
        state.registry.remove(existing.spec)
    state.registry.add(table.spec)
    state.tables[model] = table
    return table


def declared_sync(model: Any) -> tuple[Any, Any] | None:
    """``(__cachesync__, defining class)`` for *model*, or ``None``.

    A declaration inherited from a CONCRETE parent (multi-table inheritance) belongs
    to the parent's table, so it does not count for the child.
    """
    for klass in model.__mro__:
        if "__cachesync__" in vars(klass):
            owner = klass
            break
    else:
        return None
    meta = getattr(owner, "_meta", None)
    if owner is not model and meta is not None and not meta.abstract:
        return None
    return vars(owner)["__cachesync__"], owner


def discover(app_configs: Iterable[Any]) -> None:
    """Import every app's ``cachesync`` module, then resolve every declaration.

    Called by ``AppConfig.ready()``. Never raises a :class:`DeclarationError`:
    each one becomes a :class:`DeclarationProblem` for ``manage.py check``, so one
    bad declaration cannot stop ``manage.py`` itself (other exceptions in an app's
    ``cachesync.py``, such as an ``ImportError``, propagate as they would from
    ``admin.py``).
    """
    from importlib import import_module

    from django.apps import apps
    from django.utils.module_loading import module_has_submodule

    with state.lock:
        state.discovering = True
        state.problems.clear()
        try:
            for app in app_configs:
                if app.module is None or not module_has_submodule(app.module, "cachesync"):
                    continue
                name = f"{app.name}.cachesync"
                try:
                    import_module(name)
                except DeclarationError as exc:
                    state.problems.append(DeclarationProblem(str(exc), where=name))
            for model, (sync, origin) in list(state.registered.items()):
                if model in state.tables:
                    continue
                try:
                    _resolve_one(model, sync)
                except DeclarationError as exc:
                    state.problems.append(DeclarationProblem(str(exc), model=model, where=origin))
            for model in apps.get_models():
                found = declared_sync(model)
                if found is None or model._meta.proxy:
                    continue
                sync, _owner = found
                if not issubclass(model, CacheSyncModel):
                    state.problems.append(
                        DeclarationProblem(
                            f"{model_label(model)} has __cachesync__ but does not inherit "
                            "cachesync.contrib.django.CacheSyncModel, so it is not synced",
                            model=model,
                            id="cachesync.W001",
                            error=False,
                            hint="class Model(CacheSyncModel, models.Model): ... or "
                            "register(Model, ...)",
                        )
                    )
                    continue
                if model in state.registered:
                    state.problems.append(
                        DeclarationProblem(
                            f"{model_label(model)} is declared twice: __cachesync__ on the "
                            f"model and register() in {state.registered[model][1]}",
                            model=model,
                        )
                    )
                    continue
                try:
                    _resolve_one(model, sync)
                except DeclarationError as exc:
                    state.problems.append(DeclarationProblem(str(exc), model=model))
        finally:
            state.discovering = False
            state.ready = True


def problems() -> list[DeclarationProblem]:
    """Declaration problems found during start-up."""
    with state.lock:
        return list(state.problems)
