"""``INSTALLED_APPS += ["cachesync.contrib.django"]``: the app that wires cachesync into Django."""

from __future__ import annotations

import logging
import sys
from typing import Any

from django.apps import AppConfig, apps
from django.conf import settings

log = logging.getLogger("cachesync.contrib.django")


class CacheSyncConfig(AppConfig):  # type: ignore[misc]
    """Discovers declarations, applies ``settings.CACHESYNC`` and connects the fast-path hooks.

    ``ready()`` never raises for a bad declaration or bad settings: it records
    them for ``manage.py check`` (which ``runserver``, ``migrate`` and the
    cachesync management commands run first) and logs them, so a typo is
    reported with the model and the template rather than as a traceback. While
    the settings are invalid the hooks stay off rather than guess a Redis server.
    """

    name = "cachesync.contrib.django"
    label = "cachesync"
    verbose_name = "cachesync"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from ... import config
        from ...fastpath import fast_path
        from . import declarations, hooks
        from .checks import register_checks
        from .conf import load_config

        register_checks()
        _repair_pymysql()
        loaded = load_config(settings)
        declarations.state.affixes = _bind_reads(loaded.cache_alias if loaded.ok else None)
        if loaded.settings is not None and loaded.ok:
            config.configure(**loaded.overrides)
            fast_path.configure()  # rebuild the applier from the settings just applied
            hooks.set_enabled(True)
        else:
            hooks.set_enabled(False)
            for problem in loaded.problems:
                if problem.error:
                    log.error("cachesync is disabled: %s (%s)", problem.message, problem.id)
        declarations.discover(apps.get_app_configs())
        for found in declarations.problems():
            if found.error:
                log.error("cachesync: %s (%s)", found.message, found.id)
        hooks.connect(declarations.tables())
        declarations.on_change(hooks.connect)  # later register()/unregister() calls


def _bind_reads(alias: str | None) -> Any:
    """Point the read API at cache *alias*; the :class:`.conf.KeyAffixes` its key function adds.

    The read API then stores values under ``caches[alias].make_key(key)``, in the
    format of Django's ``RedisCache`` when the alias is one (so ``cache.get`` reads
    them), and every declaration deletes the ``make_key`` form of its keys too.
    A key function that is not ``prefix + key + suffix`` leaves keys verbatim (its
    entries cannot be invalidated: ``cachesync.W002``).
    """
    from ...reads import ReadStore, configure_reads
    from ...serializers import DjangoCacheSerializer, JsonSerializer
    from .conf import DJANGO_REDIS_BACKEND, key_affixes

    if alias is None:
        configure_reads(None)
        return None
    from django.core.cache import caches

    try:
        cache = caches[alias]
    except Exception as exc:  # Django's own checks report a broken cache
        log.error("cachesync: cache alias %r is unusable: %s", alias, exc)
        configure_reads(None)
        return None
    affixes = key_affixes(cache.make_key)
    backend = str(settings.CACHES.get(alias, {}).get("BACKEND", ""))
    serializer = DjangoCacheSerializer() if backend == DJANGO_REDIS_BACKEND else JsonSerializer()
    key_function = None if affixes is None or affixes.identity else affixes.wrap
    configure_reads(ReadStore(serializer=serializer, key_function=key_function))
    return affixes


def _repair_pymysql() -> None:
    """Undo the module aliasing that ``pymysql.install_as_MySQLdb()`` suffers under Django.

    With PyMySQL installed as ``MySQLdb``, Django's MySQL backend imports
    ``MySQLdb.err``, ``MySQLdb.constants`` and ``MySQLdb.converters``, which Python
    loads a second time under those names and binds as attributes of the one
    package object, so ``pymysql.err.OperationalError`` becomes a copy that the
    errors PyMySQL actually raises are not instances of: every ``except
    pymysql.err.X`` in the process (the sidecar's, the outbox relay's) silently
    stops matching. Loading the backend now and re-binding the originals keeps
    both names working; Django only uses the copies' constants.
    """
    pymysql = sys.modules.get("pymysql")
    if pymysql is None or sys.modules.get("MySQLdb") is not pymysql:
        return
    from django.db import connections

    for alias, conf in settings.DATABASES.items():
        if str(conf.get("ENGINE", "")).endswith("mysql"):
            connections[alias]  # imports the backend (no connection is opened)
    for name in ("err", "constants", "converters"):
        original = sys.modules.get(f"pymysql.{name}")
        if original is not None and getattr(pymysql, name, None) is not original:
            setattr(pymysql, name, original)
