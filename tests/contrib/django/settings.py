"""Django settings of the cachesync Django test suite: the private MariaDB and Redis.

The suite owns database ``cachesync_django_test`` and Redis database 5, so it
never collides with the other suites sharing the private services.
"""

from __future__ import annotations

import os
import tempfile

import pymysql

from tests.support.services import HOST, MARIADB_PORT, REDIS_PORT

pymysql.install_as_MySQLdb()

DATABASE_NAME = "cachesync_django_test"
REDIS_DB = 5
REDIS_URL = f"redis://{HOST}:{REDIS_PORT}/{REDIS_DB}"

SECRET_KEY = "cachesync-tests"
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "cachesync.contrib.django",
    "tests.contrib.django.testapp",
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.mysql",
        "NAME": DATABASE_NAME,
        "HOST": HOST,
        "PORT": MARIADB_PORT,
        "USER": "root",
        "PASSWORD": "",
        "OPTIONS": {"charset": "utf8mb4"},
        "TEST": {"NAME": DATABASE_NAME},
    },
    # A database without a binlog, where the outbox is the change source (test_models.py).
    "sqlite": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.path.join(tempfile.gettempdir(), f"cachesync-django-{os.getpid()}.sqlite3"),
    },
}
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_FUNCTION": "cachesync.contrib.django.raw_key",
    }
}
CACHESYNC = {"CACHE_ALIAS": "default"}
LOGGING_CONFIG = None
