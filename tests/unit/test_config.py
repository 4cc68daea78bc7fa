from __future__ import annotations

import pytest

from cachesync import ConfigurationError, Settings
from cachesync.errors import redact_url


def test_environment_names_and_coercion() -> None:
    s = Settings.from_env(
        {
            "CACHESYNC_REDIS_URL": "redis://127.0.0.1:7000/1",
            "CACHESYNC_REDIS_CLUSTER": "yes",
            "CACHESYNC_SERVER_ID": "99",
            "CACHESYNC_MODELS": "a.models, b.models",
            "CACHESYNC_KAFKA_BOOTSTRAP": "k1:9092,k2:9092",
            "OTHER": "ignored",
        }
    )
    assert s.redis_cluster is True and s.server_id == 99
    assert s.models == ("a.models", "b.models")
    assert Settings.from_env({"CACHESYNC_SERVER_ID": "5"}, server_id=7).server_id == 7


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"redis_url": "localhost:6379"}, "setting redis_url \\(CACHESYNC_REDIS_URL\\) must look"),
        ({"mysql_url": "postgres://x"}, "setting mysql_url"),
        ({"es_url": "http://a:9200,ftp://b"}, "setting es_url"),
        ({"kafka_bootstrap": "nohost"}, "setting kafka_bootstrap"),
        ({"server_id": "abc"}, "setting server_id \\(CACHESYNC_SERVER_ID\\)"),
        ({"redis_cluster": "maybe"}, "setting redis_cluster .*true/false"),
        ({"batch": "huge"}, "batch preset 'huge' is unknown"),
        ({"redis_socket_timeout": 0}, "setting redis_socket_timeout must be > 0"),
        ({"colour": "red"}, "unknown setting 'colour'"),
    ],
)
def test_invalid_settings_name_the_setting(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings.from_mapping(values)


def test_passwords_never_appear_in_errors_or_repr() -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_mapping({"mysql_url": "postgres://bob:s3cret@db/x"})
    assert "s3cret" not in str(info.value)
    s = Settings.from_mapping({"mysql_url": "mysql://bob:s3cret@db:3306/x"})
    assert "s3cret" not in repr(s)
    assert redact_url("see mysql://u:p%40ss@h/db and redis://:pw@r:1") == (
        "see mysql://u:***@h/db and redis://:***@r:1"
    )
