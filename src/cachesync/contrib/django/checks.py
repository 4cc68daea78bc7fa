"""``manage.py check`` for cachesync: declarations and ``settings.CACHESYNC``.

=================  ==============================================================
``cachesync.E001`` a declaration does not resolve (bad template, unknown field,
                   table declared twice, error raised by an app's ``cachesync.py``)
``cachesync.E002`` ``settings.CACHESYNC`` is not a dict, names an unknown setting
                   or holds an invalid value
``cachesync.E003`` the Redis cache alias cannot be used (unknown alias, not a
                   Redis cache, or given together with ``REDIS_URL``)
``cachesync.W001`` a model has ``__cachesync__`` without the ``CacheSyncModel`` mixin
``cachesync.W002`` the Redis cache alias stores keys under a prefix, so keys
                   written with Django's cache API are not the declared keys
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
    return messages


def _check_key_function(alias: str) -> list[checks.CheckMessage]:
    from django.core.cache import caches

    try:
        made = caches[alias].make_key("cachesync:probe")
    except Exception:  # the cache backend itself is broken: Django's own checks say so
        return []
    if made == "cachesync:probe":
        return []
    return [
        checks.Warning(
            f"cache alias {alias!r} stores cache.set('k', ...) under {made.replace('cachesync:probe', 'k')!r}; "
            "cachesync deletes exactly the keys its templates render, so keys written through "
            "Django's cache API will not be invalidated",
            hint=f"set 'KEY_FUNCTION': 'cachesync.contrib.django.raw_key' in CACHES[{alias!r}], "
            "or write the prefix into the key templates",
            id="cachesync.W002",
        )
    ]


def register_checks() -> None:
    """Add the cachesync checks to Django's registry (idempotent; called by ``ready()``)."""
    checks.register(check_declarations, TAG)
    checks.register(check_settings, TAG)
