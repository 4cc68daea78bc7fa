"""Declarations on Django models: the :class:`CacheSyncModel` mixin and :func:`register`.

A declaration is resolved against ``Model._meta`` into a
:class:`~cachesync.registry.TableSpec` (the ORM-neutral form the binlog sidecar
and the retry consumer use) plus a :class:`~.tables.DjangoTable` (what the
signal hooks need to read rows off instances; built in :mod:`.tables`). A
change after start-up is announced through :func:`on_change`, which
``AppConfig.ready()`` points at the hooks, so this module never imports them.

Names in templates are Django field names (the column map and its aliases:
:func:`.tables.column_map`).

Resolution needs the app registry, so it happens in ``AppConfig.ready()`` (or
at once when :func:`register` is called later). Errors found during ``ready()``
are collected and reported by ``manage.py check`` as ``cachesync.E001``; an
error in a :func:`register` call made after start-up raises
:class:`~cachesync.errors.DeclarationError` at the call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ...errors import DeclarationError
from ...planning import template_keys
from ...registry import Registry, TableSpec, default_registry
from ...spec import Invalidates, Projection, Sync
from .conf import KeyAffixes
from .tables import DjangoTable, build_table, model_label

__all__ = [
    "CacheSyncModel",
    "DeclarationProblem",
    "DjangoTable",
    "build_table",
    "on_change",
    "register",
    "table_for",
    "tables",
    "unregister",
]


class _CacheDescriptor:
    """``Model.cache``: the model's read API (:class:`.reads.ModelCache`), built at first use."""

    def __get__(self, instance: Any, owner: Any) -> Any:
        if table_for(owner) is None:  # the mixin itself, or the app registry is not ready
            return self
        from .reads import cache_for

        return cache_for(owner)

    def __getattr__(self, name: str) -> Any:
        # AttributeError, so that hasattr() probes (Django's model metaclass) keep working.
        raise AttributeError(
            f"Model.cache.{name}: this model is not a resolved cachesync model; is "
            "'cachesync.contrib.django' in INSTALLED_APPS and does 'manage.py check' pass?"
        )


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
    #: The read API: ``Article.cache.get(pk)``, ``get_by(slug=...)``, ``await aget(pk)``;
    #: ``__cachesync_reads__ = Reads(ttl=...)`` sets its options.
    cache: ClassVar[Any] = _CacheDescriptor()
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
    # What the cache alias's key function adds around a key (set by AppConfig.ready()):
    # every declaration then also deletes the make_key() form of its keys.
    affixes: KeyAffixes | None = None
    # Called with the resolved tables after each change once ready (the hooks'
    # connect(), set by AppConfig.ready(): this module does not import the hooks).
    on_change: Callable[[Mapping[Any, DjangoTable]], None] | None = None


state = _State()


def on_change(listener: Callable[[Mapping[Any, DjangoTable]], None] | None) -> None:
    """Call *listener* with the resolved tables whenever a declaration changes after start-up."""
    with state.lock:
        state.on_change = listener


def _changed() -> None:
    if state.ready and state.on_change is not None:
        state.on_change(state.tables)


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
        _changed()
        return table.spec


def unregister(model: Any) -> None:
    """Forget a model's declaration (tests, plug-ins that switch syncing off)."""
    with state.lock:
        state.registered.pop(model, None)
        table = state.tables.pop(model, None)
        if table is not None:
            state.registry.remove(table.spec)
        _changed()


def _resolve_one(model: Any, sync: Any) -> DjangoTable:
    table = build_table(model, sync, state.affixes)
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
