"""The read API on Django models: ``Article.cache.get(pk)``, ``get_by(...)`` and ``await aget(pk)``.

``Model.cache`` (on :class:`~.declarations.CacheSyncModel` models; :func:`cache_for`
for models declared with ``register()``) is a :class:`ModelCache`. A read renders
the key with the declared template from the lookup values normalised as the
signal hooks normalise an instance (the field's database form), then reads
through a lease (:class:`cachesync.reads.ModelReads`); a miss loads with
``Model._default_manager``.

Inside ``transaction.atomic`` a miss is stored only when the load sees committed
data: not when this transaction changed the row itself (its keys are pending
until the commit; a rollback would leave the uncommitted row cached), and not
on MySQL with an isolation level above READ COMMITTED (Django's default is READ
COMMITTED), where the snapshot may predate an invalidation that already ran.
Such a read loads and stores nothing.

Where the values live is the default :class:`~cachesync.reads.ReadStore`, which
``AppConfig.ready()`` points at the cache alias cachesync takes its Redis from:
the Redis key is ``caches[alias].make_key(key)`` and, for Django's own
``RedisCache``, the value is in that backend's format, so ``cache.get(key)`` of
the alias reads what the read API wrote (and vice versa a miss). Invalidation
deletes ``make_key(key)`` too (:class:`.conf.KeyAffixes`).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

from ...errors import DeclarationError
from ...reads import ModelReads, Reads, set_normaliser
from ...serializers import ModelCodec, register_model_codec
from .declarations import table_for
from .tables import DjangoTable

__all__ = ["ModelCache", "cache_for"]


def _codec(table: DjangoTable) -> ModelCodec:
    model = table.model
    names = [f.attname for f in model._meta.concrete_fields]

    def to_fields(obj: Any) -> Mapping[str, Any]:
        deferred = obj.get_deferred_fields()
        return {n: getattr(obj, n) for n in names if n not in deferred}

    def from_fields(fields: Mapping[str, Any]) -> Any:
        return model.from_db(None, list(fields), list(fields.values()))

    return ModelCodec(table.label, to_fields, from_fields)


class ModelCache:
    """The read API of one Django model (see the module docstring)."""

    def __init__(self, table: DjangoTable, reads: Reads | None = None) -> None:
        self.table = table
        self.model = table.model
        meta = self.model._meta
        self._attname = {f.column: f.attname for f in meta.local_concrete_fields}
        self.reads = ModelReads(
            table.spec, reads, templates=table.read_templates, normalise=self._normalise
        )
        register_model_codec(self.model, _codec(table))
        set_normaliser(
            table.spec.model, self._normalise, may_fill=lambda key: self._may_fill(key, None)
        )

    def _normalise(self, lookup: Mapping[str, Any]) -> Mapping[str, Any]:
        from django.db import connections, router

        connection = connections[router.db_for_read(self.model)]
        spec, norms = self.table.spec, self.table.normalisers
        row: dict[str, Any] = {}
        for name, value in lookup.items():
            attname = self._attname[spec.columns[name]]
            if value is not None and hasattr(value, "_meta") and hasattr(value, "pk"):
                value = value.pk  # a related instance given for a foreign key
            normalise = norms.get(attname)
            row[name] = normalise(value, connection) if normalise and value is not None else value
        return row

    def _lookup(self, pk: Any, lookup: Mapping[str, Any]) -> dict[str, Any]:
        if pk is not None and lookup:
            raise DeclarationError(f"{self.table.label}: give a primary key or a lookup")
        if pk is not None:
            return {"pk": pk} if "pk" in self.table.spec.columns else self.reads.primary_lookup(pk)
        return dict(lookup)

    def key(self, pk: Any = None, **lookup: Any) -> str | None:
        """The rendered key :meth:`get` / :meth:`get_by` read (before the alias's ``make_key``)."""
        return self.reads.key(self._lookup(pk, lookup))

    def _manager(self, using: str | None) -> Any:
        manager = self.model._default_manager
        return manager.db_manager(using) if using is not None else manager

    def get(self, pk: Any, *, using: str | None = None) -> Any:
        """The instance with primary key *pk*, or ``None``."""
        return self.get_by(using=using, **self._lookup(pk, {}))

    def get_by(self, *, using: str | None = None, **lookup: Any) -> Any:
        """The instance whose fields equal *lookup*, which a declared key must name exactly."""
        self.reads.template_for(lookup)
        does_not_exist = self.model.DoesNotExist

        def load() -> Any:
            try:
                return self._manager(using).get(**lookup)
            except does_not_exist:
                return None

        return self.reads.read(lookup, load, may_fill=lambda key: self._may_fill(key, using))

    def _may_fill(self, key: str, using: str | None) -> bool:
        """May a miss loaded on this thread's connection be stored? (see the module docstring)"""
        from django.db import connections, router

        connection = connections[using or router.db_for_read(self.model)]
        if not connection.in_atomic_block:
            return True  # autocommit: the SELECT sees what is committed after the lease
        if connection.vendor == "mysql" and getattr(connection, "isolation_level", None) not in (
            "read committed",
            "read uncommitted",
        ):
            return False  # REPEATABLE READ: the snapshot may predate an invalidation
        from .levels import pending_keys

        return key not in pending_keys(connection)  # its own write is not committed yet

    async def aget(self, pk: Any, *, using: str | None = None) -> Any:
        """:meth:`get` for async views, on ``redis.asyncio`` and Django's async ORM."""
        return await self.aget_by(using=using, **self._lookup(pk, {}))

    async def aget_by(self, *, using: str | None = None, **lookup: Any) -> Any:
        """:meth:`get_by` for async views."""
        self.reads.template_for(lookup)
        does_not_exist = self.model.DoesNotExist

        async def load() -> Any:
            try:
                return await self._manager(using).aget(**lookup)
            except does_not_exist:
                return None

        return await self.reads.aread(lookup, load)


_caches: weakref.WeakKeyDictionary[Any, ModelCache] = weakref.WeakKeyDictionary()


def cache_for(model: Any, reads: Reads | None = None) -> ModelCache:
    """The :class:`ModelCache` of a declared model (``Model.cache`` on the mixin).

    *reads* (or the model's ``__cachesync_reads__``) sets TTL, lease and serialiser.
    """
    table = table_for(model)
    if table is None:
        raise DeclarationError(
            f"{getattr(model, '__name__', model)} is not a resolved cachesync model; is "
            "'cachesync.contrib.django' in INSTALLED_APPS and does 'manage.py check' pass?"
        )
    found = _caches.get(table.model)
    if found is None or found.table is not table or reads is not None:
        options = reads if reads is not None else getattr(model, "__cachesync_reads__", None)
        if options is not None and not isinstance(options, Reads):
            raise DeclarationError(
                f"{table.label}: __cachesync_reads__ must be cachesync.reads.Reads(...), "
                f"got {options!r}",
                model=table.label,
            )
        found = _caches[table.model] = ModelCache(table, options)
    return found
