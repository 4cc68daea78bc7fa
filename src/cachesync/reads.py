"""The read path bound to the declarations: keys rendered by the invalidation renderer, leases on.

A user reads through the model (``Product.cache.get(pk, session=s)`` in
SQLAlchemy, ``Product.cache.get(pk)`` in Django) or through :func:`cached` on
a function whose key is a declared template. Either way:

* the key is rendered by the declared :class:`~cachesync.keys.KeyTemplate`, from
  the lookup values brought to their stored form by the ORM integration (the
  same normalisers the fast path uses), so it is byte for byte a key that the
  sidecar and the fast path delete when the row changes (guarantee 10);
* every fill goes through a lease (:mod:`cachesync.leases`): a fill that started
  before an invalidation is never stored after it, and concurrent misses on one
  key cause one load;
* a missing row is cached too (as ``None``): inserting the row deletes the key,
  because an insert's keys are rendered from its after image;
* Redis down, frozen or not configured: the loader's value is returned, after at
  most one ``redis_socket_timeout``.

This module is ORM-neutral. :class:`ModelReads` holds one declaration's
templates, normaliser and :class:`Reads` options; the ORM integrations wrap it
with their loaders. :class:`ReadStore` says where values live (which Redis, the
Redis key a rendered key is stored under, the serialiser): Django points it at
its cache alias so that ``cache.get`` reads the same entries.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from .config import Settings, get_settings
from .connections import redis_client, redis_options
from .errors import ConfigurationError, DeclarationError
from .keys import KeyTemplate
from .leases import AsyncLeases, Leases
from .registry import Registry, TableSpec, default_registry
from .serializers import JsonSerializer, Serializer

__all__ = [
    "ModelReads",
    "ReadStore",
    "Reads",
    "cached",
    "configure_reads",
    "default_store",
    "set_normaliser",
]

log = logging.getLogger("cachesync.reads")

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: ``lookup -> lookup in stored form`` for one model (keys by attribute name).
Normaliser = Callable[[Mapping[str, Any]], Mapping[str, Any]]


@dataclass(frozen=True)
class Reads:
    """Read-path options of one declaration: ``__cachesync_reads__ = Reads(ttl=60)``.

    *ttl* (seconds; ``None`` keeps values until invalidated) bounds how long a
    value lives even without a change; *lease_ms* how long a crashed loader can
    hold a key (and how long a concurrent reader waits for its value before it
    loads by itself); *serializer* overrides the store's.
    """

    ttl: float | None = 300.0
    lease_ms: int = 3000
    wait: float = 0.02
    serializer: Serializer | None = None

    def __post_init__(self) -> None:
        if self.ttl is not None and self.ttl <= 0:
            raise ConfigurationError("Reads(ttl=...) must be > 0 seconds or None", setting="ttl")
        if self.lease_ms <= 0 or self.wait <= 0:
            raise ConfigurationError("Reads(lease_ms=, wait=) must be > 0", setting="lease_ms")
        if self.serializer is not None and not isinstance(self.serializer, Serializer):
            raise ConfigurationError(
                f"Reads(serializer=...) needs dumps/loads/marker, got {self.serializer!r}",
                setting="serializer",
            )


class ReadStore:
    """Where read-through values live: a Redis, the Redis key of a rendered key, the serialiser.

    Without *client*, the Redis of :func:`cachesync.get_settings` (``redis_url``,
    with its timeouts) is used, and a ``redis.asyncio`` client on the same URL and
    timeouts for coroutines (one per event loop: its connections belong to the
    loop that made them). *key_function* maps a rendered key to the Redis key
    (Django: the cache alias's ``make_key``); every key it produces must also be
    deleted on invalidation, which the Django integration arranges.
    """

    def __init__(
        self,
        *,
        client: Any = None,
        async_client: Any = None,
        serializer: Serializer | None = None,
        key_function: Callable[[str], str] | None = None,
    ) -> None:
        self._given, self._client = client, client
        self._async_client = async_client
        self.serializer: Serializer = serializer or JsonSerializer()
        self.key_function = key_function
        self._lock = threading.Lock()
        self._settings: Settings | None = None
        self._async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )
        self._warned = False

    def stored_key(self, key: str) -> str:
        """The Redis key holding the value of rendered key *key*."""
        return key if self.key_function is None else self.key_function(key)

    def _redis_settings(self) -> Settings | None:
        settings = get_settings()
        if settings.redis_url is None:
            if not self._warned:
                self._warned = True
                log.warning(
                    "cachesync reads: no Redis is configured (setting redis_url); every read "
                    "goes to the database"
                )
            return None
        return settings

    def client(self) -> Any | None:
        """The redis-py client, or ``None`` when no Redis is configured."""
        if self._given is not None:
            return self._given
        with self._lock:
            settings = self._redis_settings()
            if settings is None:
                return None
            if self._client is None or self._settings is not settings:  # (re)configured
                self._client, self._settings = redis_client(settings), settings
            return self._client

    def async_client(self) -> Any | None:
        """A ``redis.asyncio`` client for the running loop, or ``None`` without a Redis."""
        if self._async_client is not None:
            return self._async_client
        loop = asyncio.get_running_loop()
        with self._lock:
            found = self._async_clients.get(loop)
            if found is not None:
                return found
            settings = self._redis_settings()
            if settings is None:
                return None
            made = _async_redis_client(settings)
            self._async_clients[loop] = made
            return made


def _async_redis_client(settings: Settings) -> Any:
    """``redis.asyncio`` twin of :func:`cachesync.connections.redis_client`: same URL, timeouts."""
    url = settings.require("redis_url", "to cache reads")
    options = redis_options(settings)
    if settings.redis_cluster:
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(url, **options)
    from .redis_pool import waiting_client

    return waiting_client(url, settings, options, asynchronous=True)


_store_lock = threading.Lock()
#: The process-wide store the read API uses unless given one.
default_store = ReadStore()


def configure_reads(store: ReadStore | None = None) -> ReadStore:
    """Make *store* the default for every read (``None``: a fresh one from the settings)."""
    global default_store
    with _store_lock:
        default_store = store if store is not None else ReadStore()
        return default_store


def current_store() -> ReadStore:
    """The default :class:`ReadStore` now (it can be replaced by :func:`configure_reads`)."""
    return default_store


_normalisers: dict[str, Normaliser] = {}
_fill_guards: dict[str, Callable[[str], bool]] = {}


def set_normaliser(
    model: str, normalise: Normaliser | None, may_fill: Callable[[str], bool] | None = None
) -> None:
    """Register how lookup values of *model* become stored forms (the ORM integrations do).

    *may_fill(key)*, when given, tells :func:`cached` whether a value loaded now
    may be stored (see :meth:`ModelReads.read`).
    """
    if normalise is None:
        _normalisers.pop(model, None)
    else:
        _normalisers[model] = normalise
    if may_fill is None:
        _fill_guards.pop(model, None)
    else:
        _fill_guards[model] = may_fill


class ModelReads:
    """One declaration's read side: pick a template for a lookup, render it, read through it.

    *templates* are the declared key templates (default: all of the spec's);
    *normalise* brings lookup values to their stored form, as the fast path
    does for an instance, so the rendered key equals the invalidated one.
    """

    def __init__(
        self,
        spec: TableSpec,
        reads: Reads | None = None,
        *,
        templates: Sequence[KeyTemplate] | None = None,
        normalise: Normaliser | None = None,
        store: ReadStore | None = None,
    ) -> None:
        self.spec = spec
        self.reads = reads or Reads()
        self.templates = tuple(spec.key_templates if templates is None else templates)
        self._normalise = normalise
        self._store = store
        self._by_columns: dict[frozenset[str], KeyTemplate] = {}
        # One Leases per (client, serializer): building one registers two scripts
        # (a SHA-1 each), which cost a hit about as much as rendering its key.
        self._leases_made: weakref.WeakKeyDictionary[Any, tuple[Serializer, bool, Any]] = (
            weakref.WeakKeyDictionary()
        )
        for template in self.templates:
            columns = frozenset(spec.columns[f] for f in template.fields)
            self._by_columns.setdefault(columns, template)

    @property
    def store(self) -> ReadStore:
        return self._store if self._store is not None else current_store()

    @property
    def serializer(self) -> Serializer:
        return self.reads.serializer or self.store.serializer

    def primary_lookup(self, pk: Any) -> dict[str, Any]:
        """``{primary key attribute: value}``; a composite key takes a tuple in declared order."""
        names = self.spec.primary_key
        if len(names) == 1:
            return {names[0]: pk}
        if not isinstance(pk, (tuple, list)) or len(pk) != len(names):
            raise DeclarationError(
                f"{self.spec.model}: the primary key is ({', '.join(names)}); pass a tuple of "
                f"{len(names)} values, got {pk!r}",
                model=self.spec.model,
            )
        return dict(zip(names, pk, strict=True))

    def template_for(self, names: Iterable[str]) -> KeyTemplate:
        """The declared template rendered from exactly the columns *names* name."""
        spec = self.spec
        names = list(names)
        unknown = [n for n in names if n not in spec.columns]
        if unknown:
            raise DeclarationError(
                f"{spec.model}: {', '.join(map(repr, unknown))} is not an attribute of the model "
                f"(attributes: {', '.join(sorted(spec.columns))})",
                model=spec.model,
            )
        template = self._by_columns.get(frozenset(spec.columns[n] for n in names))
        if template is None:
            declared = ", ".join(repr(t.text) for t in self.templates) or "none"
            example = ":".join(["<name>", *(f"{{{n}}}" for n in names)])
            raise DeclarationError(
                f"{spec.model}: no declared key is rendered from exactly ({', '.join(names)}), so "
                f"nothing would invalidate it (declared keys: {declared}); add one such as "
                f"{example!r} to keys=",
                model=spec.model,
            )
        return template

    def key(self, lookup: Mapping[str, Any]) -> str | None:
        """The rendered key of *lookup* (``None`` if a value is NULL: such a key never exists)."""
        template = self.template_for(lookup)
        normalise = self._normalise or _normalisers.get(self.spec.model)
        stored = normalise(lookup) if normalise is not None else lookup
        by_column = {self.spec.columns[n]: v for n, v in stored.items()}
        return template.render({f: by_column[self.spec.columns[f]] for f in template.fields})

    def _leases(self, client: Any, *, asynchronous: bool) -> Any:
        serializer = self.serializer
        try:
            made = self._leases_made.get(client)
        except TypeError:  # a client that cannot be weakly referenced: one per read
            return self._make_leases(client, serializer, asynchronous=asynchronous)
        if made is not None and made[0] is serializer and made[1] is asynchronous:
            return made[2]
        leases = self._make_leases(client, serializer, asynchronous=asynchronous)
        self._leases_made[client] = (serializer, asynchronous, leases)
        return leases

    def _make_leases(self, client: Any, serializer: Serializer, *, asynchronous: bool) -> Any:
        reads = self.reads
        kind = AsyncLeases if asynchronous else Leases
        return kind(
            client,
            ttl=reads.ttl,
            lease_ms=reads.lease_ms,
            wait=reads.wait,
            dumps=serializer.dumps,
            loads=serializer.loads,
            marker=serializer.marker,
        )

    def read(
        self,
        lookup: Mapping[str, Any],
        loader: Callable[[], T],
        *,
        may_fill: Callable[[str], bool] | None = None,
    ) -> T:
        """The cached value for *lookup*, from *loader* on a miss (through a lease).

        *may_fill(key)* False: the loader's transaction may not see the committed
        row (an old snapshot, its own uncommitted write), so the read bypasses the
        cache: it loads and stores nothing.
        """
        key = self.key(lookup)
        store = self.store
        client = store.client() if key is not None else None
        if key is None or client is None or (may_fill is not None and not may_fill(key)):
            return loader()
        leases = self._leases(client, asynchronous=False)
        return cast(T, leases.cached(store.stored_key(key), loader))

    async def aread(self, lookup: Mapping[str, Any], loader: Callable[[], Awaitable[T]]) -> T:
        """:meth:`read` for coroutines, on ``redis.asyncio``: never blocks the event loop."""
        key = self.key(lookup)
        store = self.store
        client = store.async_client() if key is not None else None
        if key is None or client is None:
            return await loader()
        leases = self._leases(client, asynchronous=True)
        return cast(T, await leases.cached(store.stored_key(key), loader))


def _declaring_spec(text: str, registry: Registry) -> TableSpec | None:
    for spec in registry.tables():
        if any(t.text == text for t in spec.key_templates):
            return spec
    return None


def cached(
    template: str,
    *,
    reads: Reads | None = None,
    registry: Registry | None = None,
    store: ReadStore | None = None,
) -> Callable[[F], F]:
    """Cache a function's value under a DECLARED key template, with leases.

    ::

        @cached("product:{pk}:price")          # declared: Sync(keys=[..., "product:{pk}:price"])
        def price(pk: int) -> Decimal: ...

        @cached("product:{pk}:price")
        async def aprice(pk: int) -> Decimal: ...   # on redis.asyncio

    The template's fields are bound to the function's arguments by name. The
    template must be one some model declares (so a change of the row deletes
    the value): checked at the first call, when every model is declared, and
    reported as :class:`DeclarationError` naming the function and the template.
    """
    parsed = KeyTemplate.parse(template)

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)
        missing = [f for f in parsed.fields if f not in signature.parameters]
        name = f"{fn.__module__}.{fn.__qualname__}"
        if missing:
            raise DeclarationError(
                f"@cached({template!r}) on {name}: the function has no argument "
                f"{', '.join(map(repr, missing))}"
            )
        bound_reads: list[ModelReads] = []

        def model_reads() -> ModelReads:
            if bound_reads:
                return bound_reads[0]
            spec = _declaring_spec(template, registry or default_registry)
            if spec is None:
                raise DeclarationError(
                    f"@cached({template!r}) on {name}: no model declares this key template, so "
                    "no change would invalidate it; add it to a model's Sync(keys=[...])"
                )
            declared = next(t for t in spec.key_templates if t.text == template)
            bound_reads.append(ModelReads(spec, reads, templates=[declared], store=store))
            return bound_reads[0]

        def lookup(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return {f: bound.arguments[f] for f in parsed.fields}

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def awrapper(*args: Any, **kwargs: Any) -> Any:
                return await model_reads().aread(
                    lookup(args, kwargs), lambda: fn(*args, **kwargs)
                )

            return cast(F, awrapper)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            reads = model_reads()
            return reads.read(
                lookup(args, kwargs),
                lambda: fn(*args, **kwargs),
                may_fill=_fill_guards.get(reads.spec.model),
            )

        return cast(F, wrapper)

    return decorate
