"""``manage.py check`` reports bad declarations and settings as errors with ids, without crashing."""

from __future__ import annotations

from typing import Any

import pytest
from django.core import checks
from django.test import override_settings

from cachesync.contrib.django.checks import check_declarations, check_settings
from tests.contrib.django.conftest import run_django


def ids(messages: list[Any]) -> list[str]:
    return [m.id for m in messages]


def test_the_test_project_passes_its_checks() -> None:
    assert check_declarations() == []
    assert check_settings() == []
    assert [m for m in checks.run_checks(tags=["cachesync"]) if m.is_serious()] == []


def test_manage_py_check_reports_bad_declarations_and_settings() -> None:
    result = run_django("check", settings_module="tests.contrib.django.settings_bad")
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "Traceback" not in out
    # unknown field, named with the model and the template
    assert "cachesync.E001" in out
    assert "csdjbad.Misspelt: key 'misspelt:{nmae}' uses unknown attribute 'nmae'" in out
    assert "csdjbad.Unclosed" in out and "malformed" in out
    # register() in an app's cachesync.py, reported with where it was called
    assert "auth.User: key 'user:{usrname}' uses unknown attribute 'usrname'" in out
    assert "tests.contrib.django.badapp.cachesync" in out
    # a stray __cachesync__ without the mixin is a warning
    assert "cachesync.W001" in out and "csdjbad.NoMixin" in out
    # settings.CACHESYNC value
    assert "cachesync.E002" in out and "fast_path" in out


@pytest.mark.parametrize(
    ("value", "expected", "fragment"),
    [
        ("not a dict", "cachesync.E002", "must be a dict"),
        ({"REDIS_URLL": "redis://x"}, "cachesync.E002", "'REDIS_URLL'"),
        ({"REDIS_URL": "http://127.0.0.1:1"}, "cachesync.E002", "redis_url"),
        ({"ES_URL": "elastic:9200"}, "cachesync.E002", "es_url"),
        ({"SERVER_ID": "zero"}, "cachesync.E002", "server_id"),
        ({"CACHE_ALIAS": "nope"}, "cachesync.E003", "'nope' is not in settings.CACHES"),
        ({"CACHE_ALIAS": "local"}, "cachesync.E003", "not a Redis cache"),
        (
            {"CACHE_ALIAS": "default", "REDIS_URL": "redis://127.0.0.1:1/0"},
            "cachesync.E003",
            "both REDIS_URL and CACHE_ALIAS",
        ),
    ],
)
def test_invalid_settings_are_check_errors(value: Any, expected: str, fragment: str) -> None:
    caches = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:6379/0",
            "KEY_FUNCTION": "cachesync.contrib.django.raw_key",
        },
        "local": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    }
    with override_settings(CACHESYNC=value, CACHES=caches):
        messages = check_settings()
    assert ids(messages) == [expected], messages
    assert fragment in messages[0].msg
    assert messages[0].is_serious()


def test_password_in_a_bad_setting_is_not_shown() -> None:
    with override_settings(CACHESYNC={"REDIS_URL": "http://user:s3cret@host:1"}):
        (message,) = check_settings()
    assert "s3cret" not in message.msg


def _caches(**options: object) -> dict[str, object]:
    return {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:6379/0",
            **options,
        }
    }


def hashed_key(key: str, key_prefix: str, version: int) -> str:
    import hashlib

    return hashlib.sha1(key.encode()).hexdigest()


def test_the_default_key_function_with_a_prefix_and_version_needs_no_warning() -> None:
    # cachesync deletes the make_key() form of every key too (KeyAffixes).
    with override_settings(
        CACHES=_caches(KEY_PREFIX="shop", VERSION=3), CACHESYNC={"CACHE_ALIAS": "default"}
    ):
        assert check_settings() == []


def test_raw_key_with_a_prefix_or_version_says_they_are_ignored() -> None:
    for options in ({"KEY_PREFIX": "shop"}, {"VERSION": 2}):
        caches = _caches(KEY_FUNCTION="cachesync.contrib.django.raw_key", **options)
        with override_settings(CACHES=caches, CACHESYNC={"CACHE_ALIAS": "default"}):
            (message,) = check_settings()
        assert message.id == "cachesync.W004", options
        assert "ignores" in message.msg and "KEY_PREFIX" in message.hint
    caches = _caches(KEY_FUNCTION="cachesync.contrib.django.raw_key")
    with override_settings(CACHES=caches, CACHESYNC={"CACHE_ALIAS": "default"}):
        assert check_settings() == []


def test_a_key_function_cachesync_cannot_follow_is_a_warning() -> None:
    caches = _caches(KEY_FUNCTION=f"{__name__}.hashed_key")
    with override_settings(CACHES=caches, CACHESYNC={"CACHE_ALIAS": "default"}):
        (message,) = check_settings()
    assert message.id == "cachesync.W002"
    assert "not be invalidated" in message.msg
    assert "raw_key" in message.hint
    assert not message.is_serious()


def test_redis_url_beside_a_prefixing_alias_on_the_same_redis_is_a_warning() -> None:
    url = "redis://127.0.0.1:6379/0"
    with override_settings(CACHES=_caches(KEY_PREFIX="shop"), CACHESYNC={"REDIS_URL": url}):
        (message,) = check_settings()
    assert message.id == "cachesync.W005" and "CACHE_ALIAS" in message.hint
    other = {"REDIS_URL": "redis://127.0.0.1:6379/1"}  # another database: not the cache
    with override_settings(CACHES=_caches(KEY_PREFIX="shop"), CACHESYNC=other):
        assert check_settings() == []
