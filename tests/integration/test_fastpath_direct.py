"""FastPath.deliver's direct UNLINK does exactly what the applier path does, against real Redis.

The fast path skips Applier.apply for the default single-node sink (bench/writepath.py);
these tests pin that the shortcut changes nothing observable: the keys deleted (a
non-UTF-8 key byte-exact), the counters, and on failure the report handed to the
failure handler, after ONE attempt.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from cachesync import metrics
from cachesync.apply import Applier
from cachesync.config import Settings
from cachesync.connections import redis_client
from cachesync.errors import TransientError
from cachesync.fastpath import FastPath
from cachesync.keys import wire_key
from cachesync.policies import ImmediateRetryPolicy
from cachesync.sinks.redis import RedisSink
from cachesync.testing import RecordingFailureHandler
from tests.support import services

pytestmark = pytest.mark.services

#: A key from a VARBINARY column that is not UTF-8 (kept as a lone surrogate, see wire_key).
ODD = b"user:\xff".decode("utf-8", "surrogateescape")


class _Sink(RedisSink):
    """A RedisSink subclass: the direct path is for the exact class only, so this one
    takes the applier's path (the reference to compare with)."""


def _paths(url: str, timeout: float = 1.0) -> tuple[Applier, Applier]:
    settings = Settings(redis_url=url, redis_connect_timeout=timeout, redis_socket_timeout=timeout)
    direct = Applier(RedisSink(redis_client(settings)), None, policy=ImmediateRetryPolicy.NONE)
    reference = Applier(_Sink(redis_client(settings)), None, policy=ImmediateRetryPolicy.NONE)
    return direct, reference


def _counters() -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    samples = {
        f"{s.name}{sorted(s.labels.items())}": s.value
        for family in text_string_to_metric_families(metrics.render_prometheus())
        for s in family.samples
        if family.type == "counter"
    }
    return {**samples, **{f"snapshot:{k}": float(v) for k, v in metrics.snapshot().items()}}


def _delivered(fast: FastPath, keys: list[str]) -> dict[str, float]:
    metrics.reset()
    fast.deliver(keys)
    return _counters()


@pytest.fixture
def fresh_metrics() -> Iterator[None]:
    metrics.reset()
    yield
    metrics.reset()


def test_direct_unlink_deletes_and_counts_as_the_applier_does(
    redis_url: str, fresh_metrics: None
) -> None:
    client = redis.Redis.from_url(redis_url)
    keys = ["fp:direct:1", "fp:direct:2", ODD, "fp:direct:1"]  # a duplicate, once
    direct, reference = _paths(redis_url)
    fast = FastPath(direct)
    counted = {}
    for name, path in (("direct", fast), ("reference", FastPath(reference))):
        for key in keys:
            client.set(wire_key(key), b"v")
        counted[name] = _delivered(path, keys)
        assert not any(client.exists(wire_key(k)) for k in keys), name
    assert fast._direct is not None and fast._direct[1] is not None  # it took the shortcut
    assert counted["direct"] == counted["reference"]
    assert counted["direct"]["snapshot:keys_deleted_total"] == 3


@pytest.fixture
def frozen(tmp_path: Path) -> Iterator[services.RedisProcess]:
    proc = services.start_redis(services.free_port(), tmp_path / "redis")
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGSTOP)  # accepts connections, never answers
    yield proc
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGCONT)
    proc.stop()


def test_a_failed_direct_unlink_reports_as_the_applier_after_one_attempt(
    frozen: services.RedisProcess, fresh_metrics: None
) -> None:
    timeout = 1.0
    direct, reference = _paths(frozen.url, timeout)
    keys = ["fp:down:1", ODD]
    reports = {}
    for name, applier in (("direct", direct), ("reference", reference)):
        handler = RecordingFailureHandler()
        started = time.monotonic()
        counted = _delivered(FastPath(applier, handler), keys)
        elapsed = time.monotonic() - started
        # One attempt: one socket timeout, never two (a retry would double the stall).
        assert elapsed < 1.6 * timeout, (name, elapsed)
        reports[name] = (
            [(f.action.keys, type(f.error), str(f.error)) for f in handler.failures],
            counted,
        )
    assert reports["direct"] == reports["reference"]
    failures, counted = reports["direct"]
    assert sorted(k for ks, _t, _m in failures for k in ks) == sorted(keys)
    assert all(t is TransientError for _k, t, _m in failures)
    assert counted["snapshot:fast_path_failures_total"] == 2
    assert counted["snapshot:keys_deleted_total"] == 0
