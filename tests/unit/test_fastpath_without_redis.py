"""The fast path with no ``redis_url``: one WARNING naming the setting, then nothing at all."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from cachesync import config
from cachesync.errors import ConfigurationError
from cachesync.fastpath import FastPath


@pytest.fixture
def no_redis(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("CACHESYNC_REDIS_URL", raising=False)
    config.reset_settings()
    config.configure()
    yield
    config.reset_settings()


def test_without_redis_the_fast_path_warns_once_and_deletes_nothing(
    no_redis: None, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cachesync.fastpath as fastpath

    def no_client(_settings: object) -> object:
        raise AssertionError("no Redis client may be built without redis_url")

    monkeypatch.setattr(fastpath, "redis_client", no_client)
    path = FastPath()
    with caplog.at_level(logging.WARNING, logger="cachesync.fastpath"):
        path.deliver(["user:1", "user:by-name:ann"])
        path.deliver(["user:2"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "redis_url" in warnings[0] and "CACHESYNC_REDIS_URL" in warnings[0]
    assert "NOT deleted" in warnings[0]
    with pytest.raises(ConfigurationError, match="redis_url"):
        _ = path.applier
    # new settings: said again if Redis is still missing
    path.configure()
    with caplog.at_level(logging.WARNING, logger="cachesync.fastpath"):
        path.deliver(["user:3"])
    assert len([r for r in caplog.records if "redis_url" in r.getMessage()]) == 2


def test_with_redis_configured_later_the_fast_path_uses_it(no_redis: None) -> None:
    path = FastPath()
    path.deliver(["user:1"])  # warned, nothing built
    config.configure(redis_url="redis://127.0.0.1:9/0", redis_connect_timeout=0.2)
    path.configure()
    assert path.applier.keys is not None
