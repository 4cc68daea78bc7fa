"""Declarations on SQLAlchemy models: :class:`CacheSyncMixin`, :func:`track` and :func:`register`.

All three read the model's mapper into the ORM-neutral arguments of
:func:`cachesync.registry.resolve` (table, schema, attribute -> column name,
primary key attributes) and add the resulting :class:`TableSpec` to a
:class:`Registry`. They read only what the mapper knows once it is constructed
(``mapper.local_table``, ``mapper.get_property_by_column``); they never call
``configure_mappers()``, which would fail on relationships to classes that are
not defined yet.

A declaration is checked when the class is defined: a typo in a key template
raises :class:`~cachesync.errors.DeclarationError` naming the model at import,
not at the first commit.
"""

from __future__ import annotations

import contextvars
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from sqlalchemy import Column, DateTime, Enum, Numeric, Table, Time, TypeDecorator, Uuid, event
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Mapper
from sqlalchemy.orm.exc import UnmappedColumnError
from sqlalchemy.types import TypeEngine

from ...binding import needed_attributes
from ...errors import DeclarationError
from ...registry import Registry, TableSpec, default_registry, resolve
from ...related import Hop, Walker
from ...spec import Invalidates, Projection, Sync

__all__ = [
    "CacheSyncMixin",
    "Declared",
    "declared_for",
    "register",
    "spec_for",
    "track",
    "unregister",
]

_T = TypeVar("_T", bound=type)


@dataclass(frozen=True)
class Declared:
    """A model's resolved declaration plus what the session hooks need from its mapping.

    ``columns`` maps attribute name to the :class:`Column` of the model's own
    table; ``needed`` lists the attributes the fast path reads from an instance
    (:func:`cachesync.binding.needed_attributes`: the key template fields, or
    every column when ``invalidates()`` is declared). ``stored_types`` are the types
    among those whose Python value may not be what the database stores (an
    ``Enum`` stores the member's name, a non-native ``Uuid`` 32 hex digits, a
    ``TypeDecorator`` whatever ``process_bind_param`` returns, a ``Numeric`` its
    value rounded to the scale, a MySQL ``DATETIME`` its fractional seconds cut
    to the column's precision): the binlog row holds the stored form, so the
    fast path renders keys from it too.
    """

    model: type
    spec: TableSpec
    registry: Registry
    table: Table
    columns: Mapping[str, Column[Any]]
    needed: tuple[str, ...]
    stored_types: Mapping[str, TypeEngine[Any]]


_lock = threading.RLock()
#: class -> its own declaration, or None for a class that opted out (``__cachesync__ = None``).
_declared: weakref.WeakKeyDictionary[type, Declared | None] = weakref.WeakKeyDictionary()
#: weak reference to a class -> the declaration that applies to its instances (its own or
#: an ancestor's); a cache. What a ``WeakKeyDictionary`` does, without its Python-level
#: ``__getitem__``: :func:`declared_for` runs for every instance every flush writes,
#: declared or not. A weak reference to a live class hashes and compares as the class.
_lookup: dict[weakref.ref[type], Declared | None] = {}


def _forget(ref: weakref.ref[type]) -> None:
    _lookup.pop(ref, None)  # the class died
#: The class whose ``__init_subclass__`` is running, so the mapper event leaves it alone.
_defining: contextvars.ContextVar[type | None] = contextvars.ContextVar(
    "cachesync_sqlalchemy_defining", default=None
)


def _model_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _mapper_of(cls: type) -> Mapper[Any] | None:
    """The mapper of *cls* itself (not of a mapped base class), or None when not mapped yet."""
    mapper: object = sa_inspect(cls, raiseerr=False)
    if isinstance(mapper, Mapper) and mapper.class_ is cls:
        return mapper
    return None


def _sync_from(
    name: str,
    sync: Sync | None,
    keys: Sequence[str],
    search: Projection | Sequence[Projection] | None,
    invalidates: Invalidates | None,
) -> Sync:
    if sync is None:
        return Sync(keys=keys, search=search, invalidates=invalidates)
    if keys or search is not None or invalidates is not None:
        raise DeclarationError(
            f"{name}: give either a Sync(...) or keys=/search=/invalidates=, not both", model=name
        )
    return sync


def _keep_old_value(target: Any, value: Any, oldvalue: Any, initiator: Any) -> None:
    """No-op ``set`` listener; registering it with ``active_history=True`` is the point.

    Without active history, assigning to an attribute that is not loaded (every
    attribute is expired after a commit) records no old value, and the fast
    path could not delete the key of the OLD username after a rename.
    """


def _declare(cls: type, sync: Sync, registry: Registry) -> Declared:
    name = _model_name(cls)
    mapper = _mapper_of(cls)
    if mapper is None:
        raise DeclarationError(
            f"{name} is not a mapped class (yet): declare it on a mapped model, apply "
            "@track(...) above @registry.mapped, or call register() after the class is mapped",
            model=name,
        )
    table = mapper.local_table
    if not isinstance(table, Table):
        raise DeclarationError(
            f"{name} is mapped to {type(table).__name__} {table!r}, not to a Table; "
            "cachesync watches tables (the binlog has no rows of a join or a select)",
            model=name,
        )
    columns: dict[str, Column[Any]] = {}
    for column in table.columns:
        try:
            prop = mapper.get_property_by_column(column)
        except UnmappedColumnError:
            continue  # excluded from the mapping: the model has no attribute for it
        columns.setdefault(prop.key, column)
    by_column = {id(column): attr for attr, column in columns.items()}
    pk_columns = [c for c in mapper.primary_key if c.table is table] or list(
        table.primary_key.columns
    )
    primary_key = [by_column[id(c)] for c in pk_columns if id(c) in by_column]
    if len(primary_key) != len(pk_columns):
        primary_key = []  # resolve() reports "the model has no primary key"
    spec = resolve(
        name,
        sync,
        table=table.name,
        columns={attr: column.name for attr, column in columns.items()},
        primary_key=primary_key,
        schema=table.schema,
        walker=_walker(cls),
    )
    needed = needed_attributes(spec, tuple(columns))
    stored_types = {
        attr: columns[attr].type
        for attr in needed
        if isinstance(columns[attr].type, (TypeDecorator, Enum, Uuid, Numeric, DateTime, Time))
    }
    declared = Declared(cls, spec, registry, table, columns, needed, stored_types)
    with _lock:
        registry.add(spec)
        for attr in needed:
            attribute = getattr(cls, attr)
            if not event.contains(attribute, "set", _keep_old_value):
                event.listen(attribute, "set", _keep_old_value, active_history=True, propagate=True)
        _declared[cls] = declared
        _lookup.clear()
    return declared


def _columns_of(mapper: Mapper[Any]) -> dict[str, str]:
    """attribute -> column name of a mapper's own table."""
    out: dict[str, str] = {}
    for column in mapper.local_table.columns:
        try:
            out.setdefault(mapper.get_property_by_column(column).key, column.name)
        except UnmappedColumnError:
            continue
    return out


def _walker(cls: type) -> Walker:
    """Follows ``related=`` / ``depends_on=`` paths through relationships or foreign keys.

    Called when relations are first resolved (the sidecar's start-up), not at class
    definition: a relationship to a class defined later is known only once every
    mapper is configured.
    """

    def walk(path: Sequence[str]) -> list[Hop]:
        from sqlalchemy.orm import MANYTOONE, configure_mappers

        name = _model_name(cls)
        try:
            configure_mappers()
        except Exception as exc:
            raise DeclarationError(
                f"{name}: the SQLAlchemy mappers do not configure: {exc}", model=name
            ) from None
        mapper: Mapper[Any] = sa_inspect(cls)
        hops: list[Hop] = []
        for part in path:
            where = f"{name}: relation {'.'.join(path)!r}: {_model_name(mapper.class_)}"
            rel = mapper.relationships.get(part)
            if rel is not None:
                if rel.direction is not MANYTOONE:
                    raise DeclarationError(
                        f"{where}.{part} is a to-many relationship; related data follows "
                        "to-one relations (a foreign key on this side)",
                        model=name,
                    )
                pairs = list(rel.local_remote_pairs or ())
                local = tuple(str(a.name) for a, _ in pairs)
                remote = tuple(str(b.name) for _, b in pairs)
                target = rel.mapper
            else:
                prop = mapper.attrs.get(part)
                column = getattr(prop, "columns", [None])[0] if prop is not None else None
                fks = list(getattr(column, "foreign_keys", ()))
                targets = [
                    m
                    for m in mapper.registry.mappers
                    if fks and m.local_table is fks[0].column.table
                ]
                if column is None or len(fks) != 1 or not targets:
                    known = sorted(
                        [r.key for r in mapper.relationships]
                        + [c.key for c in mapper.column_attrs if c.columns[0].foreign_keys]
                    )
                    raise DeclarationError(
                        f"{where} has no to-one relationship or foreign key {part!r} "
                        f"(known: {', '.join(known) or 'none'})",
                        model=name,
                    )
                local, remote, target = (column.name,), (fks[0].column.name,), targets[0]
            table = target.local_table
            hops.append(
                Hop(
                    model=_model_name(target.class_),
                    schema=getattr(table, "schema", None),
                    table=str(getattr(table, "name", "")),
                    local=local,
                    remote=remote,
                    columns=_columns_of(target),
                )
            )
            mapper = target
        return hops

    return walk


def _declare_from_class_attribute(cls: type) -> None:
    """Resolve ``__cachesync__`` of a mapped mixin subclass (its own or inherited)."""
    owner = next((c for c in cls.__mro__ if "__cachesync__" in c.__dict__), None)
    if owner is None or owner is CacheSyncMixin:
        name = _model_name(cls)
        raise DeclarationError(
            f"{name} uses CacheSyncMixin but declares nothing: add "
            "__cachesync__ = Sync(keys=[...]) (or __cachesync__ = None to opt out)",
            model=name,
        )
    if owner is not cls and owner in _declared:
        return  # a mapped, declared parent (inheritance): its declaration covers this class
    sync = owner.__dict__["__cachesync__"]
    if sync is None:
        with _lock:
            _declared[cls] = None
            _lookup.clear()
        return
    registry = getattr(cls, "__cachesync_registry__", None)
    if registry is None:
        registry = default_registry  # not `or`: an empty Registry is falsy (it has __len__)
    if not isinstance(registry, Registry):
        name = _model_name(cls)
        raise DeclarationError(
            f"{name}: __cachesync_registry__ must be a cachesync.Registry, got {registry!r}",
            model=name,
        )
    _declare(cls, sync, registry)


class CacheSyncMixin:
    """Declare what to keep in sync on a SQLAlchemy model with ``__cachesync__``.

    ::

        class User(CacheSyncMixin, Base):
            __tablename__ = "users"
            id = mapped_column(Integer, primary_key=True)
            username = mapped_column("user_name", String(64))
            __cachesync__ = Sync(keys=["user:{id}", "user:by-name:{username}"])

    The declaration is resolved right after SQLAlchemy maps the class, so an
    invalid one raises :class:`DeclarationError` at class definition. Abstract
    classes (``__abstract__ = True``) and unmapped mixins are skipped; their
    concrete subclasses inherit the declaration and register their own table.
    A subclass of a declared model (single- or joined-table inheritance) uses
    its parent's declaration unless it sets its own ``__cachesync__``
    (``None`` opts it out). ``__cachesync_registry__`` picks a registry other
    than :data:`cachesync.default_registry`. ``Model.cache`` is the read API
    (``Model.cache.get(pk, session=s)``, :mod:`.reads`).
    """

    __cachesync__: ClassVar[Sync | None]
    __cachesync_registry__: ClassVar[Registry | None] = None
    #: ``Model.cache``: the read API (:class:`.reads.ModelCache`); ``__cachesync_reads__ =
    #: Reads(ttl=...)`` sets its options. Attached below, once ``reads`` can be imported.
    cache: ClassVar[Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # DeclarativeBase maps the class inside its __init_subclass__; the mapper
        # event below must not handle it twice (or before this point).
        token = _defining.set(cls)
        try:
            super().__init_subclass__(**kwargs)
        finally:
            _defining.reset(token)
        if cls.__dict__.get("__abstract__", False) or _mapper_of(cls) is None:
            # Not mapped (yet): declarative_base()'s metaclass and registry.mapped map
            # the class later; _on_mapper_constructed resolves it then.
            return
        _declare_from_class_attribute(cls)


def _on_mapper_constructed(mapper: Mapper[Any], cls: type) -> None:
    if issubclass(cls, CacheSyncMixin) and _defining.get() is not cls:
        _declare_from_class_attribute(cls)


event.listen(Mapper, "after_mapper_constructed", _on_mapper_constructed)


def register(
    model: type,
    sync: Sync | None = None,
    *,
    keys: Sequence[str] = (),
    search: Projection | Sequence[Projection] | None = None,
    invalidates: Invalidates | None = None,
    registry: Registry | None = None,
) -> TableSpec:
    """Declare a mapped class you do not own (a third-party model); returns its spec.

    Give a :class:`Sync` or its fields as keywords. Registering the same class
    again replaces its declaration. Raises :class:`DeclarationError` naming the
    model when the declaration does not fit it or the class is not mapped.
    """
    if not isinstance(model, type):
        raise DeclarationError(f"register() expects a mapped class, got {model!r}")
    declaration = _sync_from(_model_name(model), sync, keys, search, invalidates)
    return _declare(model, declaration, default_registry if registry is None else registry).spec


def track(
    sync: Sync | None = None,
    *,
    keys: Sequence[str] = (),
    search: Projection | Sequence[Projection] | None = None,
    invalidates: Invalidates | None = None,
    registry: Registry | None = None,
) -> Callable[[_T], _T]:
    """Class decorator form of :func:`register` for a mapped class::

    @track(keys=["user:{id}"])
    class User(Base): ...
    """

    def decorate(cls: _T) -> _T:
        register(cls, sync, keys=keys, search=search, invalidates=invalidates, registry=registry)
        return cls

    return decorate


def unregister(model: type) -> None:
    """Forget a model's declaration (tests, hot reload); its instances are no longer tracked."""
    with _lock:
        declared = _declared.pop(model, None)
        if declared is not None:
            declared.registry.remove(declared.spec)
        _lookup.clear()


_UNKNOWN: Any = object()


def declared_for(cls: type) -> Declared | None:
    """The declaration that applies to instances of *cls*: its own, or the nearest ancestor's."""
    found = _lookup.get(weakref.ref(cls), _UNKNOWN)
    if found is not _UNKNOWN:
        return found  # type: ignore[no-any-return]
    with _lock:
        found = next((_declared[c] for c in cls.__mro__ if c in _declared), None)
        _lookup[weakref.ref(cls, _forget)] = found
    return found


def spec_for(model: type | object) -> TableSpec | None:
    """The :class:`TableSpec` that applies to a mapped class or instance, or None."""
    declared = declared_for(model if isinstance(model, type) else type(model))
    return declared.spec if declared is not None else None
