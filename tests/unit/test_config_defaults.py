"""Defaults that isolate pipelines, and the TOML config file (``--config``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cachesync import ConfigurationError, Settings
from cachesync.config import SERVER_ID_MAX, SERVER_ID_MIN, derive_server_id, load_config_file


def test_there_is_no_default_redis() -> None:
    assert Settings().redis_url is None


def test_the_server_id_derives_from_name_and_database_stably() -> None:
    orders = Settings(name="orders", mysql_url="mysql://u@db:3306/shop")
    users = Settings(name="users", mysql_url="mysql://u@db:3306/shop")
    assert orders.resolved_server_id == derive_server_id("orders", "shop")
    assert orders.resolved_server_id != users.resolved_server_id
    # the same pipeline (a standby, a restart, another host) gets the same id
    assert Settings(name="orders", mysql_url="mysql://x:y@other:1/shop").resolved_server_id == (
        orders.resolved_server_id
    )
    assert Settings(name="orders", mysql_url="mysql://u@db/stock").resolved_server_id != (
        orders.resolved_server_id
    )
    ids = {derive_server_id(f"p{i}", "db") for i in range(2000)}
    assert len(ids) == 2000
    assert all(SERVER_ID_MIN <= i <= SERVER_ID_MAX for i in ids)
    assert SERVER_ID_MIN > 1_000_000 and SERVER_ID_MAX == 2**31 - 1
    assert Settings(name="orders", server_id=7541).resolved_server_id == 7541


def test_topics_derive_from_the_name_unless_given() -> None:
    s = Settings(name="orders")
    assert s.resolved_retry_topic == "cachesync.orders.retry"
    assert s.resolved_dead_letter_topic == "cachesync.orders.dead-letter"
    # derived at use, so a renamed copy follows its new name
    assert s.replace(name="users").resolved_retry_topic == "cachesync.users.retry"
    old = Settings(name="orders", retry_topic="cachesync.retry", dead_letter_topic="dl")
    assert (old.resolved_retry_topic, old.resolved_dead_letter_topic) == ("cachesync.retry", "dl")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cachesync.toml"
    path.write_text(text)
    return path


def test_a_config_file_is_overridden_by_the_environment_then_by_flags(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        'name = "orders"\nredis_url = "redis://file:6379/0"\nserver_id = 99\n'
        'models = ["a.models", "b.models"]\nfast_path = false\nes_timeout = 2.5\n',
    )
    s = Settings.load(path, {})
    assert (s.name, s.redis_url, s.server_id, s.fast_path, s.es_timeout) == (
        "orders",
        "redis://file:6379/0",
        99,
        False,
        2.5,
    )
    assert s.models == ("a.models", "b.models")
    env = {"CACHESYNC_REDIS_URL": "redis://env:6379/0", "CACHESYNC_SERVER_ID": "5"}
    s = Settings.load(path, env, server_id="6")
    assert (s.redis_url, s.server_id, s.name) == ("redis://env:6379/0", 6, "orders")
    # CACHESYNC_CONFIG names the file when --config is not given
    assert Settings.load(None, {"CACHESYNC_CONFIG": str(path)}).name == "orders"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('redis_ur = "redis://x:1/0"\n', "unknown key 'redis_ur'; did you mean 'redis_url'"),
        ('[cachesync]\nname = "x"\n', "unknown key 'cachesync'; settings go at the top level"),
        ('name = "x"\nname2 = \n', "not valid TOML"),
        ("server_id = 0\n", "server_id must be in 1..4294967295"),
        ('redis_url = "localhost:6379"\n', "setting redis_url"),
        ("[redis_url]\nx = 1\n", "redis_url must be a value, not a table"),
    ],
)
def test_a_bad_config_file_names_the_key_and_the_file(
    tmp_path: Path, text: str, message: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigurationError, match=message) as info:
        load_config_file(path)
    assert str(path) in str(info.value)


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="nope.toml: no such file"):
        Settings.load(tmp_path / "nope.toml", {})
