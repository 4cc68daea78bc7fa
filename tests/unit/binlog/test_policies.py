"""SidecarPolicy and ReconnectPolicy: frozen, validated, and the same schedules as before Backoff.

Pure tests (no service); they live with the binlog tests because the sidecar is
these policies' only user.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest

from cachesync.binlog import ReconnectPolicy, SidecarPolicy
from cachesync.binlog.reindex import WRITE_BACKOFF, _Writer
from cachesync.errors import ConfigurationError, TransientError
from cachesync.policies import Backoff, BatchPolicy


def test_defaults_are_the_former_tuples_and_numbers() -> None:
    policy = SidecarPolicy()
    assert policy == SidecarPolicy.DEFAULT
    assert policy.batch == BatchPolicy.DEFAULT
    assert policy.handoff_backoff == Backoff(0.5, 30.0)
    assert policy.retry_backoff == Backoff(0.5, 10.0)
    assert (policy.idle_wait, policy.idle_checkpoint_seconds) == (1.0, 1.0)
    assert (policy.idle_checkpoint_bytes, policy.lock_wait) == (64 * 1024, 1.0)
    assert (policy.lock_check_seconds, policy.lock_session_timeout) == (2.0, 30)
    assert policy.reconnect == ReconnectPolicy.DEFAULT == ReconnectPolicy()
    reconnect = ReconnectPolicy()
    assert reconnect.backoff == Backoff(0.2, 5.0, jitter=0.2)
    assert (reconnect.heartbeat, reconnect.read_timeout, reconnect.connect_timeout) == (
        1.0,
        5.0,
        5.0,
    )


def test_policies_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        SidecarPolicy().idle_wait = 2.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ReconnectPolicy().heartbeat = 2.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: SidecarPolicy(handoff_backoff=(0.1, 0.5)), "SidecarPolicy.handoff_backoff"),
        (lambda: SidecarPolicy(retry_backoff=(0.2, 1.0)), "SidecarPolicy.retry_backoff"),
        (lambda: SidecarPolicy(batch=1000), "SidecarPolicy.batch"),
        (lambda: SidecarPolicy(reconnect=None), "SidecarPolicy.reconnect"),
        (lambda: SidecarPolicy(idle_wait=0), "SidecarPolicy.idle_wait"),
        (lambda: SidecarPolicy(lock_session_timeout=0), "SidecarPolicy.lock_session_timeout"),
        (
            lambda: SidecarPolicy(idle_checkpoint_seconds=-1),
            "SidecarPolicy.idle_checkpoint_seconds",
        ),
        (lambda: SidecarPolicy(idle_checkpoint_bytes=-1), "SidecarPolicy.idle_checkpoint_bytes"),
        (lambda: SidecarPolicy(lock_wait=-0.5), "SidecarPolicy.lock_wait"),
        (lambda: SidecarPolicy(lock_check_seconds=-1), "SidecarPolicy.lock_check_seconds"),
        (lambda: ReconnectPolicy(backoff=(0.2, 5.0)), "ReconnectPolicy.backoff"),
        (lambda: ReconnectPolicy(heartbeat=0), "ReconnectPolicy.heartbeat"),
        (lambda: ReconnectPolicy(read_timeout=-1), "ReconnectPolicy.read_timeout"),
        (lambda: ReconnectPolicy(connect_timeout=0), "ReconnectPolicy.connect_timeout"),
        (lambda: ReconnectPolicy(heartbeat=2.0, read_timeout=2.0), "ReconnectPolicy.read_timeout"),
    ],
)
def test_invalid_values_fail_on_construction_naming_the_field(make: Any, field: str) -> None:
    with pytest.raises(ConfigurationError, match=field.replace(".", r"\.")):
        make()


def test_zero_where_zero_means_something_is_accepted() -> None:
    # The test harness and the benchmark save idle positions at once (0 bytes).
    policy = SidecarPolicy(
        idle_checkpoint_bytes=0, idle_checkpoint_seconds=0, lock_wait=0, lock_check_seconds=0
    )
    assert policy.idle_checkpoint_bytes == 0


@pytest.mark.parametrize("bounds", [(0.5, 30.0), (0.5, 10.0), (0.1, 0.5), (0.2, 1.0)])
def test_sidecar_schedules_match_the_former_backoff_formula(bounds: tuple[float, float]) -> None:
    """The sidecar's old ``_backoff``: ``min(cap, first * 2**(n-1)) * uniform(0.8, 1.2)``."""
    first, cap = bounds
    old_rng, new_rng = random.Random(42), random.Random(42)
    backoff = Backoff(first, cap)
    for attempt in range(1, 40):
        old = min(cap, first * 2 ** max(0, attempt - 1)) * old_rng.uniform(0.8, 1.2)
        assert backoff.delay(attempt, new_rng) == pytest.approx(old, rel=1e-12)


def test_reconnect_schedule_matches_the_former_delay() -> None:
    """The old ``ReconnectPolicy.delay``: ``min(maximum, initial * 2**(n-1)) * (1 ± jitter)``."""
    initial, maximum, jitter = 0.2, 5.0, 0.2
    old_rng, new_rng = random.Random(7), random.Random(7)
    backoff = ReconnectPolicy().backoff
    for failures in range(1, 40):
        base = min(maximum, initial * 2 ** max(0, failures - 1))
        old = base * (1 + old_rng.uniform(-jitter, jitter))
        assert backoff.delay(failures, new_rng) == pytest.approx(old, rel=1e-12)


def test_reindex_writes_wait_as_before_through_the_injected_sleep() -> None:
    """Formerly ``time.sleep(0.2 * 2**attempt)``: 0.4, 0.8, 1.6, 3.2 s."""
    assert [WRITE_BACKOFF.delay(n) for n in range(1, 5)] == [0.2 * 2**n for n in range(1, 5)]

    class FlakySink:
        def __init__(self) -> None:
            self.calls = 0

        def apply(self, actions: Any) -> list[Any]:
            self.calls += 1
            if self.calls < 5:
                raise TransientError("search down")
            return []

    slept: list[float] = []
    sink = FlakySink()
    _Writer(sink, sleep=slept.append).write([])  # type: ignore[arg-type]
    assert sink.calls == 5
    assert slept == [0.4, 0.8, 1.6, 3.2]
    slept.clear()
    with pytest.raises(TransientError):
        _Writer(FlakySink(), attempts=3, sleep=slept.append).write([])  # type: ignore[arg-type]
    assert slept == [0.4, 0.8]


def test_backoff_takes_any_attempt_count_without_overflow() -> None:
    from cachesync.policies import Backoff

    backoff = Backoff(0.5, 60.0, jitter=0.0)
    assert [backoff.base(n) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    for attempt in (1024, 1025, 5000, 10**9):
        assert backoff.base(attempt) == 60.0 and backoff.delay(attempt) == 60.0
