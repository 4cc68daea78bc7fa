"""``settings.CACHESYNC`` -> :class:`cachesync.Settings`, with Redis and MySQL taken from Django.

The dict uses the setting names of :class:`~cachesync.config.Settings` in upper
case (``"REDIS_URL"``, ``"ES_URL"``, ...), the same names as the environment
variables (``CACHESYNC_REDIS_URL``) and the CLI flags (``--redis-url``) of the
standalone command. Values in the dict win over the environment, which fills
the rest. Two names exist only here, because only a Django process has
something to point them at:

``CACHE_ALIAS`` (env ``CACHESYNC_CACHE_ALIAS``)
    Take the Redis URL from this ``settings.CACHES`` alias, so Redis is
    configured once. Django's ``django.core.cache.backends.redis.RedisCache``
    and django-redis (``django_redis.cache.RedisCache``, default or herd client)
    are understood. When neither ``REDIS_URL`` nor ``CACHE_ALIAS`` is given
    anywhere, the ``"default"`` alias is used if it is a Redis cache; else there
    is no Redis (no guessed ``localhost``), reported as the warning
    ``cachesync.W003``.
``DATABASE_ALIAS`` (env ``CACHESYNC_DATABASE_ALIAS``, default ``"default"``)
    When ``MYSQL_URL`` is not given, build it from this ``settings.DATABASES``
    entry if it is MySQL/MariaDB. The binlog sidecar needs ``REPLICATION
    SLAVE``/``REPLICATION CLIENT``; give it its own ``MYSQL_URL`` when the
    application's user lacks them.

Only the connection URL is taken from the cache alias: cachesync builds its own
client with its own explicit timeouts (``REDIS_CONNECT_TIMEOUT``,
``REDIS_SOCKET_TIMEOUT``), because Django's cache client has none by default
and a frozen Redis must never hang a request.

Problems are returned as :class:`Problem` objects, never raised, so that
``AppConfig.ready()`` cannot crash and ``manage.py check`` can report them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from ...config import Settings, env_name
from ...errors import ConfigurationError, redact_url

__all__ = [
    "DJANGO_ONLY_SETTINGS",
    "DjangoConfig",
    "KeyAffixes",
    "Problem",
    "key_affixes",
    "load_config",
    "mysql_url_from_database",
    "raw_key",
    "redis_url_from_cache",
]

#: Setting names that exist only in the Django integration (see the module docstring).
DJANGO_ONLY_SETTINGS = ("cache_alias", "database_alias")

DJANGO_REDIS_BACKEND = "django.core.cache.backends.redis.RedisCache"
DJANGO_REDIS_PACKAGE_BACKEND = "django_redis.cache.RedisCache"
_DJANGO_REDIS_SINGLE_CLIENTS = (
    "django_redis.client.DefaultClient",
    "django_redis.client.default.DefaultClient",
    "django_redis.client.HerdClient",
    "django_redis.client.herd.HerdClient",
)


@dataclass(frozen=True)
class Problem:
    """A configuration problem, turned into a system check message by :mod:`.checks`."""

    id: str
    message: str
    hint: str | None = None
    error: bool = True


@dataclass(frozen=True)
class DjangoConfig:
    """The outcome of reading Django's settings: :class:`Settings` or the problems found.

    ``overrides`` are the values that Django contributed (the dict, plus URLs
    derived from ``CACHES``/``DATABASES``); ``redis_source`` says where the
    Redis URL came from, for messages.
    """

    settings: Settings | None
    overrides: Mapping[str, Any]
    problems: tuple[Problem, ...]
    redis_source: str
    cache_alias: str | None

    @property
    def ok(self) -> bool:
        return self.settings is not None and not any(p.error for p in self.problems)


def raw_key(key: str, key_prefix: str, version: int) -> str:
    """A Django cache ``KEY_FUNCTION`` that stores keys verbatim.

    cachesync deletes exactly the keys its templates render. Django's default key
    function stores ``cache.set("article:1", ...)`` as ``":1:article:1"``, which no
    template names. With ``"KEY_FUNCTION": "cachesync.contrib.django.raw_key"`` in
    the cache alias, the Redis key is ``article:1``. It ignores ``KEY_PREFIX`` and
    ``VERSION``, so ``manage.py check`` warns (``cachesync.W004``) when the alias sets
    either: put any namespace into the templates themselves. Without it (Django's
    default key function, with any ``KEY_PREFIX``/``VERSION``) cachesync deletes
    the prefixed keys as well (:class:`KeyAffixes`).
    """
    return key


@dataclass(frozen=True)
class KeyAffixes:
    """What a cache alias's key function puts around a key: ``make_key(k) == prefix + k + suffix``.

    Django's default key function gives ``f"{KEY_PREFIX}:{VERSION}:{k}"``. cachesync
    derives a second template ``prefix + template + suffix`` from every declared
    key (and a second key from every ``invalidates()`` key), so that invalidation
    also deletes what ``cache.set(k, ...)`` stored; the read API stores its values
    under ``make_key(k)`` too.
    """

    prefix: str
    suffix: str

    @property
    def identity(self) -> bool:
        return not self.prefix and not self.suffix

    def wrap(self, key: str) -> str:
        return f"{self.prefix}{key}{self.suffix}"

    def wrap_template(self, text: str) -> str:
        """The template of the wrapped keys (braces of the affixes escaped for ``str.format``)."""

        def escape(part: str) -> str:
            return part.replace("{", "{{").replace("}", "}}")

        return f"{escape(self.prefix)}{text}{escape(self.suffix)}"


_PROBES = ("cachesync-probe-a", "cachesync-probe:bb/{x}")


def key_affixes(make_key: Any) -> KeyAffixes | None:
    """The :class:`KeyAffixes` of *make_key*, or ``None`` when it is not ``prefix + key + suffix``.

    A key function that hashes or reorders the key (or that raises) cannot be
    expressed as templates, so keys written through it cannot be invalidated:
    the caller reports that (``cachesync.W002``) instead of ignoring it.
    """
    found: set[tuple[str, str]] = set()
    for probe in _PROBES:
        try:
            made = str(make_key(probe))
        except Exception:
            return None
        head, sep, tail = made.partition(probe)
        if not sep or probe in tail:
            return None
        found.add((head, tail))
    if len(found) != 1:
        return None
    prefix, suffix = found.pop()
    return KeyAffixes(prefix, suffix)


def _problem_for(exc: ConfigurationError, where: str) -> Problem:
    return Problem("cachesync.E002", f"{where}: {exc}", hint=_SETTINGS_HINT)


_SETTINGS_HINT = (
    "settings.CACHESYNC is a dict of cachesync setting names in upper case, e.g. "
    "{'REDIS_URL': 'redis://127.0.0.1:6379/0', 'ES_URL': 'http://127.0.0.1:9200'}"
)


def redis_url_from_cache(alias: str, caches: Mapping[str, Any]) -> str:
    """The Redis URL of cache *alias* in a ``settings.CACHES`` dict.

    Raises :class:`ConfigurationError` (setting ``cache_alias``) when the alias is
    missing, is not a Redis cache, or uses a client cachesync cannot follow
    (django-redis sharding or Sentinel clients).
    """
    conf = caches.get(alias)
    if not isinstance(conf, Mapping):
        known = ", ".join(sorted(caches)) or "none"
        raise ConfigurationError(
            f"CACHE_ALIAS {alias!r} is not in settings.CACHES (aliases: {known})",
            setting="cache_alias",
        )
    backend = str(conf.get("BACKEND", ""))
    options = conf.get("OPTIONS") or {}
    if backend == DJANGO_REDIS_BACKEND:
        password = options.get("password")
        username = options.get("username")
        db = options.get("db")
    elif backend == DJANGO_REDIS_PACKAGE_BACKEND:
        client = str(options.get("CLIENT_CLASS", "django_redis.client.DefaultClient"))
        if client not in _DJANGO_REDIS_SINGLE_CLIENTS:
            raise ConfigurationError(
                f"CACHE_ALIAS {alias!r} uses the django-redis client {client}; cachesync can "
                "follow only a single-server client (DefaultClient, HerdClient). Set REDIS_URL "
                "(and REDIS_CLUSTER for a cluster) instead",
                setting="cache_alias",
            )
        password = options.get("PASSWORD")
        username = options.get("USERNAME")
        db = options.get("DB")
    else:
        raise ConfigurationError(
            f"CACHE_ALIAS {alias!r} uses backend {backend or '(none)'}, not a Redis cache "
            f"({DJANGO_REDIS_BACKEND} or {DJANGO_REDIS_PACKAGE_BACKEND}); set REDIS_URL instead",
            setting="cache_alias",
        )
    location = conf.get("LOCATION")
    servers: list[str]
    if isinstance(location, str):
        servers = [s.strip() for s in re.split("[;,]", location) if s.strip()]
    elif isinstance(location, (list, tuple)):
        servers = [str(s).strip() for s in location if str(s).strip()]
    else:
        servers = []
    if not servers:
        raise ConfigurationError(f"CACHE_ALIAS {alias!r} has no LOCATION", setting="cache_alias")
    # Django and django-redis both write to the first server; later ones are replicas.
    url = servers[0]
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigurationError(
            f"CACHE_ALIAS {alias!r}: LOCATION {redact_url(url)!r} is not a redis://, rediss:// "
            "or unix:// URL",
            setting="cache_alias",
        )
    if parts.scheme == "unix":  # a socket path: only the database can be added
        if db is not None and "db=" not in parts.query:
            url += ("&" if parts.query else "?") + f"db={int(db)}"
        return url
    netloc, path = parts.netloc, parts.path
    if password and parts.password is None:
        user = quote(str(username or parts.username or ""), safe="")
        host_port = parts.netloc.rpartition("@")[2]  # keeps [::1]:6379 intact
        netloc = f"{user}:{quote(str(password), safe='')}@{host_port}"
    if db is not None and path in ("", "/"):
        path = f"/{int(db)}"
    if (netloc, path) == (parts.netloc, parts.path):
        return url
    return urlunsplit((parts.scheme, netloc, path, parts.query, parts.fragment))


_MYSQL_ENGINES = ("django.db.backends.mysql",)


def mysql_url_from_database(alias: str, databases: Mapping[str, Any]) -> str | None:
    """A ``mysql://`` URL for ``settings.DATABASES[alias]``; ``None`` if it is not MySQL over TCP.

    Raises :class:`ConfigurationError` (setting ``database_alias``) for an unknown alias.
    """
    conf = databases.get(alias)
    if not isinstance(conf, Mapping):
        known = ", ".join(sorted(databases)) or "none"
        raise ConfigurationError(
            f"DATABASE_ALIAS {alias!r} is not in settings.DATABASES (aliases: {known})",
            setting="database_alias",
        )
    engine = str(conf.get("ENGINE", ""))
    if engine not in _MYSQL_ENGINES and not engine.endswith(".mysql"):
        return None
    host = str(conf.get("HOST") or "localhost")
    if host.startswith("/"):
        return None  # a Unix socket: cachesync's mysql:// URLs speak TCP only
    user = quote(str(conf.get("USER") or "root"), safe="")
    password = conf.get("PASSWORD")
    auth = f"{user}:{quote(str(password), safe='')}" if password else user
    port = conf.get("PORT")
    netloc = f"{auth}@{host}" + (f":{int(port)}" if port else "")
    return f"mysql://{netloc}/{quote(str(conf.get('NAME') or ''), safe='')}"


def load_config(django_settings: Any, environ: Mapping[str, str] | None = None) -> DjangoConfig:
    """Read ``CACHESYNC``, ``CACHES`` and ``DATABASES`` from *django_settings*.

    Never raises: every problem becomes a :class:`Problem` (ids ``cachesync.E002``
    for the dict and its values, ``cachesync.E003`` for the cache alias).
    """
    environ = os.environ if environ is None else environ
    raw = getattr(django_settings, "CACHESYNC", None)
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        problem = Problem(
            "cachesync.E002",
            f"settings.CACHESYNC must be a dict, got {type(raw).__name__}",
            hint=_SETTINGS_HINT,
        )
        return DjangoConfig(None, {}, (problem,), "", None)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = str(key).lower()
        if name.startswith("cachesync_"):
            name = name[len("cachesync_") :]
        values[name] = value
    known = set(Settings.names()) | set(DJANGO_ONLY_SETTINGS)
    unknown = sorted(k for k in raw if str(k).lower().removeprefix("cachesync_") not in known)
    if unknown:
        problem = Problem(
            "cachesync.E002",
            f"settings.CACHESYNC has unknown setting(s) {', '.join(map(repr, unknown))}; known: "
            + ", ".join(sorted(n.upper() for n in known)),
            hint=_SETTINGS_HINT,
        )
        return DjangoConfig(None, {}, (problem,), "", None)

    problems: list[Problem] = []
    overrides = {k: v for k, v in values.items() if k not in DJANGO_ONLY_SETTINGS}
    cache_alias = values.get("cache_alias")
    redis_source = "settings.CACHESYNC['REDIS_URL']"
    if "redis_url" in overrides:
        if cache_alias is not None:
            problems.append(
                Problem(
                    "cachesync.E003",
                    "settings.CACHESYNC gives both REDIS_URL and CACHE_ALIAS",
                    hint="keep one: CACHE_ALIAS to reuse a Django cache's Redis, or REDIS_URL",
                )
            )
    elif cache_alias is None and env_name("redis_url") in environ:
        redis_source = env_name("redis_url")
    else:
        caches = getattr(django_settings, "CACHES", None) or {}
        if cache_alias is None:
            cache_alias = environ.get(env_name("cache_alias"))
        if cache_alias is None and _is_redis_cache(caches):
            cache_alias = "default"
        if cache_alias is None:
            redis_source = "nowhere"  # no default Redis: see the W003 warning below
        else:
            try:
                overrides["redis_url"] = redis_url_from_cache(str(cache_alias), caches)
                redis_source = f"settings.CACHES[{cache_alias!r}]"
            except ConfigurationError as exc:
                problems.append(
                    Problem(
                        "cachesync.E003",
                        str(exc),
                        hint="point CACHE_ALIAS at a Redis cache in settings.CACHES, "
                        "or set REDIS_URL",
                    )
                )

    if "mysql_url" not in overrides and env_name("mysql_url") not in environ:
        alias = values.get("database_alias") or environ.get(env_name("database_alias"))
        databases = getattr(django_settings, "DATABASES", None) or {}
        if alias is not None or "default" in databases:
            try:
                url = mysql_url_from_database(str(alias or "default"), databases)
            except ConfigurationError as exc:
                problems.append(_problem_for(exc, "settings.CACHESYNC"))
            else:
                if url is not None:
                    overrides["mysql_url"] = url

    if redis_source == "nowhere":
        problems.append(
            Problem(
                "cachesync.W003",
                "no Redis is configured for cachesync: saves do not delete cache keys after "
                "commit, and the sidecar refuses to start while models declare keys",
                hint="set CACHESYNC['REDIS_URL'], or CACHESYNC['CACHE_ALIAS'] naming a Redis "
                "cache in settings.CACHES (a Redis 'default' cache is used by itself)",
                error=False,
            )
        )
    if any(p.error for p in problems):
        return DjangoConfig(None, overrides, tuple(problems), redis_source, cache_alias)
    try:
        settings = Settings.from_env(environ, **overrides)
    except ConfigurationError as exc:
        problems.append(_problem_for(exc, "settings.CACHESYNC"))
        return DjangoConfig(None, overrides, tuple(problems), redis_source, cache_alias)
    return DjangoConfig(settings, overrides, tuple(problems), redis_source, cache_alias)


def _is_redis_cache(caches: Any) -> bool:
    if not isinstance(caches, Mapping):
        return False
    default = caches.get("default")
    return isinstance(default, Mapping) and default.get("BACKEND") in (
        DJANGO_REDIS_BACKEND,
        DJANGO_REDIS_PACKAGE_BACKEND,
    )
