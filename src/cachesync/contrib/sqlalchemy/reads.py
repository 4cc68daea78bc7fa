"""The read API on SQLAlchemy models: ``Product.cache.get(pk, session=...)`` and its async twin.

``Model.cache`` (on :class:`CacheSyncMixin` models; :func:`cache_for` for the
others) is a :class:`ModelCache`. A read renders the key with the declared
template from the lookup values in their stored form (the same conversion the
session hooks apply to a flushed instance, :func:`.images.stored_row`), then
reads through a lease (:class:`cachesync.reads.ModelReads`). On a miss it loads
with the session given (``session.get(Model, pk)``, or one ``SELECT ... WHERE``
for :meth:`ModelCache.get_by`); a session factory (``sessionmaker``,
``async_sessionmaker``) opens a session for the load and closes it after.

A hit returns a *detached* instance with every column loaded (no session, so
relationships are not loaded; ``session.merge(obj, load=False)`` attaches it).
A miss returns the instance of the session that loaded it. A session already in
a transaction is not used for the load: its snapshot may predate an
invalidation that already ran (MySQL's REPEATABLE READ), and it sees its own
uncommitted changes, so a fill from it could stay stale; the load runs in a
fresh session on the same bind instead (its instance is returned detached).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import inspect as sa_inspect
from sqlalchemy import select
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from ...errors import DeclarationError
from ...reads import ModelReads, Reads, set_normaliser
from ...serializers import ModelCodec, register_model_codec
from .declare import Declared, declared_for
from .images import stored_row

__all__ = ["ModelCache", "cache_for"]

#: A session, or something that makes one (sessionmaker, async_sessionmaker, a callable).
SessionArg = Any

_MYSQL = mysql.dialect()


def _dialect_of(session: Any, model: type) -> Dialect | None:
    sync = getattr(session, "sync_session", session)  # AsyncSession -> its Session
    if not isinstance(sync, Session):
        return None
    try:
        return sync.get_bind(mapper=sa_inspect(model)).dialect
    except Exception:  # an unbound session: the key is rendered for MySQL/MariaDB
        return None


def _async_engine_of(session: Any, model: type) -> Any:
    """The ``AsyncEngine`` an ``AsyncSession`` reads *model* from, or None (bound to a connection)."""
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

    try:
        bind = session.sync_session.get_bind(mapper=sa_inspect(model))
    except Exception:
        return None
    return AsyncEngine(bind) if isinstance(bind, Engine) else None


def _codec(declared: Declared) -> ModelCodec:
    model = declared.model
    names = tuple(declared.columns)
    mapper: Any = sa_inspect(model)

    def to_fields(obj: Any) -> Mapping[str, Any]:
        loaded = sa_inspect(obj).dict
        return {n: loaded[n] for n in names if n in loaded}

    def from_fields(fields: Mapping[str, Any]) -> Any:
        obj = mapper.class_manager.new_instance()
        for name, value in fields.items():
            set_committed_value(obj, name, value)
        make_transient_to_detached(obj)
        return obj

    return ModelCodec(declared.spec.model, to_fields, from_fields)


class ModelCache:
    """The read API of one SQLAlchemy model (see the module docstring)."""

    def __init__(self, declared: Declared, reads: Reads | None = None) -> None:
        self.declared = declared
        self.model = declared.model
        self._dialect: Dialect = _MYSQL
        self.reads = ModelReads(declared.spec, reads, normalise=self._normalise)
        register_model_codec(self.model, _codec(declared))
        set_normaliser(declared.spec.model, self._normalise)

    def _normalise(self, lookup: Mapping[str, Any]) -> Mapping[str, Any]:
        row = stored_row(self.declared, lookup, self._dialect)
        return row if row is not None else lookup

    def _with(self, session: SessionArg) -> None:
        dialect = _dialect_of(session, self.model)
        if dialect is not None:
            self._dialect = dialect

    def _from_factory(self, factory: Any) -> None:
        """Learn the dialect from a (async_)sessionmaker's bind without opening a session."""
        bind = getattr(factory, "kw", {}).get("bind")
        dialect = getattr(bind, "dialect", None)
        if isinstance(dialect, Dialect):
            self._dialect = dialect

    def key(self, pk: Any = None, **lookup: Any) -> str | None:
        """The key :meth:`get` (with *pk*) or :meth:`get_by` (with *lookup*) reads."""
        return self.reads.key(self._lookup(pk, lookup))

    def _lookup(self, pk: Any, lookup: Mapping[str, Any]) -> dict[str, Any]:
        if pk is not None and lookup:
            raise DeclarationError(f"{self.declared.spec.model}: give a primary key or a lookup")
        return self.reads.primary_lookup(pk) if pk is not None else dict(lookup)

    # -- synchronous --------------------------------------------------------------------------

    def get(self, pk: Any, *, session: SessionArg) -> Any:
        """The instance with primary key *pk* (a tuple for a composite key), or ``None``."""
        lookup = self.reads.primary_lookup(pk)
        return self._read(lookup, session, lambda s: s.get(self.model, pk))

    def get_by(self, *, session: SessionArg, **lookup: Any) -> Any:
        """The instance whose attributes equal *lookup*, which a declared key must name exactly."""
        self.reads.template_for(lookup)  # a lookup no key names fails before any I/O
        statement: Any = select(self.model).filter_by(**lookup)
        return self._read(lookup, session, lambda s: s.scalars(statement).one_or_none())

    def _read(self, lookup: dict[str, Any], session: SessionArg, load: Callable[[Any], Any]) -> Any:
        if isinstance(session, Session):
            self._with(session)
            if not session.in_transaction():
                return self.reads.read(lookup, lambda: load(session))
            # Its transaction may read from a snapshot taken before an invalidation that
            # already happened (REPEATABLE READ), or see its own uncommitted changes: a fill
            # from it could be stale for good. Fill from a fresh session on the same bind.
            try:
                bind = session.get_bind(mapper=sa_inspect(self.model))
            except Exception:  # no bind to open a fresh session on: read, do not fill
                return load(session)

            def load_fresh() -> Any:
                with Session(bind=bind) as fresh:
                    return load(fresh)

            return self.reads.read(lookup, load_fresh)

        def load_in_new_session() -> Any:
            with session() as opened:
                self._with(opened)
                return load(opened)

        if not callable(session):
            raise TypeError(f"session= expects a Session or a session factory, got {session!r}")
        self._from_factory(session)
        return self.reads.read(lookup, load_in_new_session)

    # -- asyncio ------------------------------------------------------------------------------

    async def aget(self, pk: Any, *, session: SessionArg) -> Any:
        """:meth:`get` with an ``AsyncSession`` or ``async_sessionmaker``, on ``redis.asyncio``."""
        lookup = self.reads.primary_lookup(pk)

        async def load(s: Any) -> Any:
            return await s.get(self.model, pk)

        return await self._aread(lookup, session, load)

    async def aget_by(self, *, session: SessionArg, **lookup: Any) -> Any:
        """:meth:`get_by` for asyncio."""
        self.reads.template_for(lookup)
        statement: Any = select(self.model).filter_by(**lookup)

        async def load(s: Any) -> Any:
            return (await s.scalars(statement)).one_or_none()

        return await self._aread(lookup, session, load)

    async def _aread(self, lookup: dict[str, Any], session: SessionArg, load: Any) -> Any:
        from sqlalchemy.ext.asyncio import AsyncSession

        if isinstance(session, AsyncSession):
            self._with(session)
            if not session.in_transaction():
                return await self.reads.aread(lookup, lambda: load(session))
            engine = _async_engine_of(session, self.model)  # see _read(): fill from a fresh one
            if engine is None:
                return await load(session)

            async def load_fresh() -> Any:
                async with AsyncSession(engine) as fresh:
                    return await load(fresh)

            return await self.reads.aread(lookup, load_fresh)

        async def load_in_new_session() -> Any:
            async with session() as opened:
                self._with(opened)
                return await load(opened)

        if not callable(session):
            raise TypeError(
                f"session= expects an AsyncSession or an async_sessionmaker, got {session!r}"
            )
        self._from_factory(session)
        return await self.reads.aread(lookup, load_in_new_session)


_caches: weakref.WeakKeyDictionary[type, ModelCache] = weakref.WeakKeyDictionary()


def cache_for(model: type, reads: Reads | None = None) -> ModelCache:
    """The :class:`ModelCache` of a declared model (the mixin's ``Model.cache``).

    *reads* (or the model's ``__cachesync_reads__``) sets TTL, lease and
    serialiser; given again, it replaces the model's options.
    """
    declared = declared_for(model)
    if declared is None:
        raise DeclarationError(
            f"{model.__module__}.{model.__qualname__} is not declared: use CacheSyncMixin, "
            "@track(...) or register() before reading through it"
        )
    found = _caches.get(model)
    if found is None or found.declared is not declared or reads is not None:
        options = reads if reads is not None else getattr(model, "__cachesync_reads__", None)
        if options is not None and not isinstance(options, Reads):
            raise DeclarationError(
                f"{declared.spec.model}: __cachesync_reads__ must be cachesync.reads.Reads(...), "
                f"got {options!r}",
                model=declared.spec.model,
            )
        found = _caches[model] = ModelCache(declared, options)
    return found


class CacheDescriptor:
    """``Model.cache`` on the mixin: the model's :class:`ModelCache`, built at first use."""

    def __get__(self, instance: Any, owner: type) -> Any:
        if declared_for(owner) is None:  # the mixin itself, or a class being mapped
            return self
        return cache_for(owner)

    def __getattr__(self, name: str) -> Any:
        # AttributeError, not DeclarationError: hasattr() probes (declarative scanning) must work.
        raise AttributeError(
            f"Model.cache.{name}: this class is not a declared model (is it mapped, with "
            "__cachesync__ = Sync(keys=[...])?)"
        )
