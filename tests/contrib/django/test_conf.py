"""settings.CACHESYNC -> Settings: one name per setting, Redis from a cache alias, MySQL from DATABASES."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from cachesync.contrib.django.conf import (
    load_config,
    mysql_url_from_database,
    raw_key,
    redis_url_from_cache,
)
from cachesync.errors import ConfigurationError

BUILTIN = "django.core.cache.backends.redis.RedisCache"
DJANGO_REDIS = "django_redis.cache.RedisCache"
MYSQL = {
    "ENGINE": "django.db.backends.mysql",
    "NAME": "shop",
    "HOST": "db",
    "PORT": 3306,
    "USER": "app",
    "PASSWORD": "p@ss:word",
}


def django(**values: Any) -> Any:
    values.setdefault("CACHES", {})
    values.setdefault("DATABASES", {})
    return SimpleNamespace(**values)


@pytest.mark.parametrize(
    ("conf", "url"),
    [
        ({"BACKEND": BUILTIN, "LOCATION": "redis://r:6379/2"}, "redis://r:6379/2"),
        ({"BACKEND": BUILTIN, "LOCATION": "redis://r:6379;redis://replica:6379"}, "redis://r:6379"),
        ({"BACKEND": BUILTIN, "LOCATION": ["redis://r:1/0", "redis://s:1/0"]}, "redis://r:1/0"),
        (
            {
                "BACKEND": BUILTIN,
                "LOCATION": "redis://r:6379",
                "OPTIONS": {"db": 3, "password": "a/b"},
            },
            "redis://:a%2Fb@r:6379/3",
        ),
        ({"BACKEND": DJANGO_REDIS, "LOCATION": "rediss://u:pw@r:6380/1"}, "rediss://u:pw@r:6380/1"),
        (
            {
                "BACKEND": DJANGO_REDIS,
                "LOCATION": "redis://r:6379/0",
                "OPTIONS": {"PASSWORD": "pw"},
            },
            "redis://:pw@r:6379/0",
        ),
        (
            {"BACKEND": BUILTIN, "LOCATION": "unix:///run/redis.sock", "OPTIONS": {"db": 4}},
            "unix:///run/redis.sock?db=4",
        ),
    ],
)
def test_redis_url_from_a_cache_alias(conf: dict[str, Any], url: str) -> None:
    assert redis_url_from_cache("default", {"default": conf}) == url


@pytest.mark.parametrize(
    ("conf", "fragment"),
    [
        ({"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}, "not a Redis cache"),
        ({"BACKEND": BUILTIN}, "no LOCATION"),
        ({"BACKEND": BUILTIN, "LOCATION": "memcached://x"}, "not a redis://"),
        (
            {
                "BACKEND": DJANGO_REDIS,
                "LOCATION": "redis://x",
                "OPTIONS": {"CLIENT_CLASS": "django_redis.client.ShardClient"},
            },
            "single-server client",
        ),
    ],
)
def test_unusable_cache_aliases(conf: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        redis_url_from_cache("default", {"default": conf})


def test_mysql_url_from_databases() -> None:
    assert mysql_url_from_database("default", {"default": MYSQL}) == (
        "mysql://app:p%40ss%3Aword@db:3306/shop"
    )
    sqlite = {"ENGINE": "django.db.backends.sqlite3", "NAME": "x.db"}
    assert mysql_url_from_database("default", {"default": sqlite}) is None
    socket = {**MYSQL, "HOST": "/run/mysqld/mysqld.sock"}
    assert mysql_url_from_database("default", {"default": socket}) is None
    with pytest.raises(ConfigurationError, match="'replica' is not in settings.DATABASES"):
        mysql_url_from_database("replica", {"default": MYSQL})


def test_same_names_as_the_environment_and_dict_wins_over_env() -> None:
    env = {"CACHESYNC_ES_URL": "http://env:9200", "CACHESYNC_KAFKA_BOOTSTRAP": "k:9092"}
    config = load_config(
        django(CACHESYNC={"ES_URL": "http://dict:9200", "batch": "throughput"}), env
    )
    assert config.ok
    assert config.settings is not None
    assert config.settings.es_url == "http://dict:9200"  # dict beats the environment
    assert config.settings.kafka_bootstrap == "k:9092"  # the environment fills the rest
    assert config.settings.batch == "throughput"  # names are case-insensitive


def test_redis_comes_from_the_default_cache_unless_given() -> None:
    caches = {"default": {"BACKEND": BUILTIN, "LOCATION": "redis://cache:6379/1"}}
    implicit = load_config(django(CACHES=caches), {})
    assert implicit.settings is not None and implicit.settings.redis_url == "redis://cache:6379/1"
    assert implicit.redis_source == "settings.CACHES['default']"

    from_env = load_config(django(CACHES=caches), {"CACHESYNC_REDIS_URL": "redis://env:1/0"})
    assert from_env.settings is not None and from_env.settings.redis_url == "redis://env:1/0"

    alias_env = {"CACHESYNC_CACHE_ALIAS": "sessions", "CACHESYNC_REDIS_URL": "redis://env:1/0"}
    caches["sessions"] = {"BACKEND": BUILTIN, "LOCATION": "redis://sessions:6379/0"}
    explicit = load_config(django(CACHES=caches, CACHESYNC={"CACHE_ALIAS": "sessions"}), alias_env)
    assert explicit.settings is not None
    assert explicit.settings.redis_url == "redis://sessions:6379/0"

    locmem = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    fallback = load_config(django(CACHES=locmem), {})
    assert fallback.ok and fallback.cache_alias is None


def test_mysql_url_comes_from_the_database_alias_unless_given() -> None:
    derived = load_config(django(DATABASES={"default": MYSQL}), {})
    assert derived.settings is not None
    assert derived.settings.mysql_url == "mysql://app:p%40ss%3Aword@db:3306/shop"
    env = load_config(django(DATABASES={"default": MYSQL}), {"CACHESYNC_MYSQL_URL": "mysql://e/x"})
    assert env.settings is not None and env.settings.mysql_url == "mysql://e/x"
    other = load_config(
        django(
            DATABASES={"default": MYSQL, "binlog": {**MYSQL, "NAME": "other"}},
            CACHESYNC={"DATABASE_ALIAS": "binlog"},
        ),
        {},
    )
    assert other.settings is not None and other.settings.mysql_url.endswith("/other")


def test_raw_key_stores_keys_verbatim() -> None:
    assert raw_key("article:1", "prefix", 3) == "article:1"
