"""Django on the real private MariaDB and Redis, without pytest-django.

Django is set up when this package is collected (test modules import models),
but the suite keeps its footprint inside the package:

* declarations go to a private :class:`~cachesync.Registry`, not the process-wide
  one the other suites' sidecars read;
* the process-wide settings and fast path are switched to the Django ones only
  while this package's tests run (``_django_cachesync``), and reset afterwards;
* database ``cachesync_django_test`` is created from scratch and migrated once
  per session; every test that writes starts from empty tables and an empty
  Redis database 5 (``clean``). Commits are real (no wrapping transaction), as in
  Django's ``TransactionTestCase``, because the fast path runs on commit.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import django
import pytest

os.environ["DJANGO_SETTINGS_MODULE"] = "tests.contrib.django.settings"

from cachesync.contrib.django import declarations
from cachesync.registry import Registry

declarations.state.registry = Registry()
django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, connections  # noqa: E402

from cachesync import config  # noqa: E402
from cachesync.contrib.django import hooks  # noqa: E402
from cachesync.contrib.django.apps import _bind_reads  # noqa: E402
from cachesync.contrib.django.conf import load_config  # noqa: E402
from cachesync.fastpath import fast_path  # noqa: E402
from cachesync.reads import configure_reads  # noqa: E402


def _release_process_state() -> None:
    config.reset_settings()
    fast_path.configure()
    hooks.set_enabled(False)
    configure_reads(None)  # the read API's default store, as other suites expect it


# ready() configured the process for Django; hand it back until our tests run.
_release_process_state()


@pytest.fixture(scope="package", autouse=True)
def _django_cachesync() -> Iterator[None]:
    loaded = load_config(settings)
    assert loaded.ok, loaded.problems
    config.configure(**loaded.overrides)
    fast_path.configure()
    hooks.set_enabled(True)
    _bind_reads(loaded.cache_alias)  # the read API on the cache alias, as ready() does
    yield
    _release_process_state()


def _admin_connection() -> Any:
    import pymysql

    db = settings.DATABASES["default"]
    return pymysql.connect(
        host=db["HOST"],
        port=int(db["PORT"]),
        user=db["USER"],
        password=db["PASSWORD"],
        autocommit=True,
    )


@pytest.fixture(scope="session")
def django_db(services: dict[str, str]) -> str:
    """A freshly created and migrated ``cachesync_django_test`` database."""
    name = settings.DATABASES["default"]["NAME"]
    admin = _admin_connection()
    try:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
            cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    finally:
        admin.close()
    connections.close_all()
    call_command("migrate", run_syncdb=True, verbosity=0, interactive=False)
    return str(name)


@pytest.fixture
def redis_db(services: dict[str, str]) -> Iterator[Any]:
    """Redis database 5 of the private Redis, emptied before the test."""
    import redis

    client = redis.Redis.from_url(settings.CACHES["default"]["LOCATION"], socket_timeout=5)
    client.flushdb()
    yield client
    client.close()


_TABLES = (
    "csdj_article_tags",
    "csdj_article",
    "csdj_tag",
    "csdj_restaurant",
    "csdj_place",
    "csdj_typed",
    "csdj_plain",
    "auth_user",
    "cachesync_outbox",
)


@pytest.fixture
def clean(django_db: str, redis_db: Any) -> Iterator[Any]:
    """Empty tables and Redis database; yields the Redis client."""
    with connection.cursor() as cursor:
        cursor.execute("SET FOREIGN_KEY_CHECKS = 0")
        for table in _TABLES:
            cursor.execute(f"TRUNCATE TABLE `{table}`")
        cursor.execute("SET FOREIGN_KEY_CHECKS = 1")
    yield redis_db
    assert not connection.in_atomic_block, "a test left a transaction open"


ROOT = __import__("pathlib").Path(__file__).resolve().parents[3]


def django_env(settings_module: str = "tests.contrib.django.settings") -> dict[str, str]:
    """Environment for a ``python -m django`` child: our settings, no stray CACHESYNC_*.

    The port offset stays: it says which private services this run owns, and
    without it the child would talk to another run's MariaDB and Redis.
    """
    keep = {"CACHESYNC_SERVICES_PORT_OFFSET"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHESYNC_") or k in keep}
    env["DJANGO_SETTINGS_MODULE"] = settings_module
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def run_django(
    *args: str, settings_module: str = "tests.contrib.django.settings", timeout: float = 60
) -> Any:
    """Run ``python -m django ARGS`` to completion; returns the CompletedProcess."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "django", *args],
        cwd=ROOT,
        env=django_env(settings_module),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
