"""Settings of the example blog: MariaDB, Redis and Elasticsearch from ``CACHESYNC_*`` variables.

The same variables configure the standalone ``cachesync`` command, so the
Django app, ``manage.py cachesync_listen`` and ``example_project/sqlalchemy_app.py``
all point at the same services (``scripts/services env`` prints them):

``CACHESYNC_MYSQL_URL``  database of the blog (default: the private MariaDB's ``cachesync``)
``CACHESYNC_REDIS_URL``  the cache; Django's cache alias uses it, and cachesync takes it from there
``CACHESYNC_ES_URL``     search (read by cachesync from the environment)
``CACHESYNC_KAFKA_BOOTSTRAP``  retry queue (read by cachesync from the environment)
"""

from __future__ import annotations

import os

from cachesync.connections import mysql_params

try:  # mysqlclient if installed, else PyMySQL standing in for it
    import MySQLdb  # noqa: F401
except ImportError:
    import pymysql

    pymysql.install_as_MySQLdb()

MYSQL_URL = os.environ.get("CACHESYNC_MYSQL_URL", "mysql://root@127.0.0.1:33061/cachesync")
REDIS_URL = os.environ.get("CACHESYNC_REDIS_URL", "redis://127.0.0.1:63791/0")

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "blogsite.urls"
WSGI_APPLICATION = "blogsite.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "cachesync.contrib.django",  # discovers declarations, fast path, cachesync_* commands
    "blog",
]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]

_db = mysql_params(MYSQL_URL)
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.mysql",
        "NAME": _db.get("database", "cachesync"),
        "HOST": _db["host"],
        "PORT": _db["port"],
        "USER": _db["user"],
        "PASSWORD": _db["password"],
        "OPTIONS": {"charset": "utf8mb4"},
        # One transaction per request: the fast path deletes keys after it commits.
        "ATOMIC_REQUESTS": True,
    }
}

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        # Store cache.set("article:1", ...) under "article:1", the key cachesync deletes.
        "KEY_FUNCTION": "cachesync.contrib.django.raw_key",
    }
}

# Redis comes from the cache above; everything else from CACHESYNC_* variables.
CACHESYNC = {"CACHE_ALIAS": "default"}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"cachesync": {"handlers": ["console"], "level": "INFO"}},
}
