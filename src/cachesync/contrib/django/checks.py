"""``manage.py check`` for cachesync: declarations and ``settings.CACHESYNC``.

=================  ==============================================================
``cachesync.E001`` a declaration does not resolve (bad template, unknown field,
                   table declared twice, error raised by an app's ``cachesync.py``)
``cachesync.E002`` ``settings.CACHESYNC`` is not a dict, names an unknown setting
                   or holds an invalid value
``cachesync.E003`` the Redis cache alias cannot be used (unknown alias, not a
                   Redis cache, or given together with ``REDIS_URL``)
``cachesync.W001`` a model has ``__cachesync__`` without the ``CacheSyncModel`` mixin
``cachesync.W002`` the key function of the Redis cache alias is not ``prefix +
                   key + suffix`` (hashing, say), so keys written with Django's
                   cache API cannot be named, hence not invalidated
``cachesync.W004`` the alias uses ``raw_key`` but sets ``KEY_PREFIX``/``VERSION``,
                   which ``raw_key`` ignores
``cachesync.W005`` ``REDIS_URL`` is given while a prefixing Redis cache alias uses
                   the same Redis: that alias's entries are not invalidated
``cachesync.W003`` no Redis is configured (no ``REDIS_URL``, ``CACHE_ALIAS`` or Redis
                   ``default`` cache): nothing deletes keys after commit
=================  ==============================================================

Declaration problems are collected while ``AppConfig.ready()`` resolves them
(so that one typo cannot crash ``manage.py`` itself); settings are read again at
check time, so the report reflects the current settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.core import checks

from . import declarations
from .conf import load_config

__all__ = ["check_declarations", "check_settings", "register_checks"]

TAG = "cachesync"


def _message(error: bool, text: str, *, hint: str | None, obj: Any, id: str) -> checks.CheckMessage:
    kind = checks.Error if error else checks.Warning
    return kind(text, hint=hint, obj=obj, id=id)


def check_declarations(
    app_configs: Sequence[Any] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """Problems found while resolving ``__cachesync__`` and ``register()`` declarations."""
    labels = None if app_configs is None else {app.label for app in app_configs}
    messages: list[checks.CheckMessage] = []
    for problem in declarations.problems():
        model = problem.model
        if labels is not None and model is not None and model._meta.app_label not in labels:
            continue
        hint = problem.hint
        if hint is None and problem.error:
            hint = (
                "key templates name model fields ({pk}, {field}, {fk} or {fk_id}); fix the "
                "declaration" + (f" in {problem.where}" if problem.where else "")
            )
        messages.append(
            _message(
                problem.error,
                problem.message,
                hint=hint,
                obj=model if model is not None else problem.where or None,
                id=problem.id,
            )
        )
    return messages


def check_settings(
    app_configs: Sequence[Any] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """``settings.CACHESYNC`` problems, and a cache alias whose keys are not the declared ones."""
    config = load_config(settings)
    messages = [
        _message(p.error, p.message, hint=p.hint, obj=None, id=p.id) for p in config.problems
    ]
    if config.ok and config.cache_alias is not None:
        messages.extend(_check_key_function(config.cache_alias))
    elif config.ok and config.settings is not None and config.settings.redis_url is not None:
        messages.extend(_check_prefixed_twins(config.settings.redis_url))
    return messages


def _check_prefixed_twins(redis_url: str) -> list[checks.CheckMessage]:
    """A Redis cache alias on cachesync's own Redis, whose prefix cachesync was not told about."""
    from django.core.cache import caches

    from .conf import key_affixes, redis_url_from_cache

    messages: list[checks.CheckMessage] = []
    for alias in getattr(settings, "CACHES", {}) or {}:
        try:
            same = redis_url_from_cache(alias, settings.CACHES) == redis_url
            affixes = key_affixes(caches[alias].make_key) if same else None
        except Exception:  # not a Redis cache, or a broken one
            continue
        if same and (affixes is None or not affixes.identity):
            messages.append(
                checks.Warning(
                    f"cache alias {alias!r} uses cachesync's Redis with a key prefix, but "
                    "REDIS_URL is given instead of CACHE_ALIAS, so cache.set('k', ...) "
                    "entries of that alias are not invalidated",
                    hint=f"set CACHESYNC['CACHE_ALIAS'] = {alias!r} instead of REDIS_URL",
                    id="cachesync.W005",
                )
            )
    return messages


def _check_key_function(alias: str) -> list[checks.CheckMessage]:
    from django.core.cache import caches

    from .conf import key_affixes, raw_key

    try:
        cache = caches[alias]
    except Exception:  # the cache backend itself is broken: Django's own checks say so
        return []
    conf = settings.CACHES.get(alias, {})
    function = getattr(cache, "key_func", None)
    if function is raw_key and (conf.get("KEY_PREFIX") or conf.get("VERSION", 1) != 1):
        return [
            checks.Warning(
                f"CACHES[{alias!r}] sets KEY_PREFIX/VERSION, which KEY_FUNCTION raw_key ignores: "
                "keys are stored verbatim",
                hint="remove KEY_PREFIX/VERSION (put a namespace into the key templates), or "
                "drop KEY_FUNCTION: with Django's default key function cachesync deletes the "
                "prefixed keys too",
                id="cachesync.W004",
            )
        ]
    if key_affixes(cache.make_key) is not None:
        return []  # prefix + key + suffix: the declarations delete the make_key() form too
    return [
        checks.Warning(
            f"the key function of cache alias {alias!r} is not prefix + key + suffix, so "
            "cachesync cannot name the Redis keys of cache.set('k', ...): they will not be "
            "invalidated",
            hint=f"use Django's default key function or 'cachesync.contrib.django.raw_key' in "
            f"CACHES[{alias!r}]",
            id="cachesync.W002",
        )
    ]


def register_checks() -> None:
    """Add the cachesync checks to Django's registry (idempotent; called by ``ready()``)."""
    checks.register(check_declarations, TAG)
    checks.register(check_settings, TAG)
