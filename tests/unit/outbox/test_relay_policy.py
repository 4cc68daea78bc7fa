"""RelayPolicy validation and presets, and the relay loop's waits with time injected."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pytest

from cachesync import ConfigurationError, DeleteKeys, ImmediateRetryPolicy, RetryPolicy
from cachesync.errors import TransientError
from cachesync.outbox import KIND_FAILED, STATE_PENDING, OutboxRelay, OutboxStore, RelayReport
from cachesync.policies import Backoff, RelayPolicy
from cachesync.testing import MemoryKeySink


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"poll_interval": 0}, "poll_interval"),
        ({"poll_interval": -1.0}, "poll_interval"),
        ({"retry": ImmediateRetryPolicy()}, "retry"),
        ({"immediate": RetryPolicy()}, "immediate"),
    ],
)
def test_invalid_relay_policy_names_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"RelayPolicy\.{field}"):
        RelayPolicy(**changes)  # type: ignore[arg-type]


def test_relay_policy_is_frozen_and_has_presets() -> None:
    assert RelayPolicy() == RelayPolicy.DEFAULT == RelayPolicy.preset("DEFAULT")
    assert (RelayPolicy.DEFAULT.batch_size, RelayPolicy.DEFAULT.poll_interval) == (200, 0.5)
    assert RelayPolicy.DEFAULT.retry == RetryPolicy.DEFAULT
    assert RelayPolicy.DEFAULT.immediate == ImmediateRetryPolicy.DEFAULT
    assert RelayPolicy.preset("low_latency").poll_interval < RelayPolicy.DEFAULT.poll_interval
    assert RelayPolicy.preset("throughput").batch_size > RelayPolicy.DEFAULT.batch_size
    with pytest.raises(dataclasses.FrozenInstanceError):
        RelayPolicy.DEFAULT.batch_size = 1  # type: ignore[misc]
    with pytest.raises(ConfigurationError, match="relay preset 'eager' is unknown"):
        RelayPolicy.preset("eager")


@pytest.mark.parametrize(
    ("poll", "max_backoff"), [(0.5, 60.0), (0.2, 2.0), (0.5, 0.5), (0.5, 0.7), (2.0, 300.0)]
)
def test_outage_wait_is_the_schedule_the_relay_always_had(poll: float, max_backoff: float) -> None:
    retry = RetryPolicy(min_backoff=min(0.1, max_backoff), max_backoff=max_backoff)
    outage = RelayPolicy(poll_interval=poll, retry=retry).outage
    assert isinstance(outage, Backoff) and outage.jitter == 0
    for failures in range(1, 12):
        before = min(max_backoff, poll * 2 ** min(failures, 6))  # the pre-policy formula
        assert outage.delay(failures) == pytest.approx(before)


def test_row_delay_is_the_retry_schedule() -> None:
    retry = RetryPolicy(attempts=3, min_backoff=0.2, max_backoff=0.5, jitter=0.0)
    policy = RelayPolicy(retry=retry)
    assert [policy.row_delay(n) for n in (1, 2, 3)] == [0.2, 0.4, 0.5]


class FakeStop:
    """A stop event that records every wait and stops after *waits* of them."""

    def __init__(self, waits: int) -> None:
        self.waits: list[float | None] = []
        self.limit = waits

    def is_set(self) -> bool:
        return len(self.waits) >= self.limit

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        return self.is_set()


class ScriptedRelay(OutboxRelay):
    """run_once() follows a script: an int is a claimed count, an exception is raised."""

    def __init__(self, script: Sequence[int | Exception], policy: RelayPolicy) -> None:
        super().__init__(None, redis=None, search=None, policy=policy)  # type: ignore[arg-type]
        self.script = list(script)

    def run_once(self) -> RelayReport:
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return RelayReport(claimed=step)


def test_run_waits_poll_interval_when_idle_and_backs_off_while_the_database_is_down() -> None:
    policy = RelayPolicy(batch_size=10, poll_interval=0.5, retry=RetryPolicy(max_backoff=3.0))
    down = TransientError("outbox database unreachable")
    relay = ScriptedRelay([10, 3, down, down, down, down, 0, down], policy)
    stop = FakeStop(waits=7)
    relay.run(stop)
    # full batch: no wait; short batch: poll; outages: 1, 2, 3 (capped), 3; recovered
    # (and the outage count resets): poll; a new outage starts again at 1
    assert stop.waits == [0.5, 1.0, 2.0, 3.0, 3.0, 0.5, 1.0]


def test_relay_on_a_sqlite_store_applies_and_defers_with_the_policys_schedule(
    tmp_path: Path,
) -> None:
    import datetime as dt

    from cachesync.connections import sql_engine

    store = OutboxStore(sql_engine(f"sqlite:///{tmp_path / 'outbox.db'}"))
    store.create_table()
    store.add(KIND_FAILED, [DeleteKeys(("a", "b"))])
    clock = dt.datetime(2026, 1, 1, 12, 0, 0)
    retry = RetryPolicy(attempts=3, min_backoff=2.0, max_backoff=10.0, jitter=0.0)
    policy = RelayPolicy(retry=retry, immediate=ImmediateRetryPolicy.NONE)
    sleeps: list[float] = []
    down = MemoryKeySink()
    down.down = True
    relay = OutboxRelay(
        store, redis=down, search=None, policy=policy, now=lambda: clock, sleep=sleeps.append
    )
    report = relay.run_once()
    assert (report.claimed, report.done, report.deferred) == (1, 0, 1)
    (row,) = store.rows(STATE_PENDING)
    assert row["attempts"] == 1 and row["available_at"] == clock + dt.timedelta(seconds=2.0)
    assert "UNLINK" in row["last_error"]
    assert relay.run_once().claimed == 0  # not due yet
    up = MemoryKeySink()
    later = clock + dt.timedelta(seconds=2.0)
    relay = OutboxRelay(store, redis=up, search=None, policy=policy, now=lambda: later)
    assert relay.run_once().done == 1
    assert up.deleted == ["a", "b"] and sleeps == []
    assert store.counts() == {"pending": 0, "done": 1, "dead": 0}
    store.engine.dispose()
