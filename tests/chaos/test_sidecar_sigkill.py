"""The sidecar killed with SIGKILL at random points, MariaDB restarted under it, leader failover.

Marker scheme: just before a statement commits, the test sets every cache key
the statement's rows will invalidate (old and new images). The changes are
organised in rounds in which each key is touched by exactly one change; after a
round the test waits until the sidecar has applied everything (sync point) and
asserts that none of the round's keys exists any more. A lost invalidation
leaves its key behind, and no later change of the same round can mask it.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.integration.binlog.harness import (
    BinlogEnv,
    SidecarProcess,
    binlog_env,
    running,
)
from tests.support import services

__all__ = ["binlog_env"]  # the fixture, imported for pytest

pytestmark = [pytest.mark.services, pytest.mark.chaos]

Round = Callable[[BinlogEnv], Iterator[tuple[list[str], list[str]]]]


def _chunks(first: int, last: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(first, last + 1, size):
        yield start, min(start + size - 1, last)


def round_insert(env: BinlogEnv) -> Iterator[tuple[list[str], list[str]]]:
    for a, b in _chunks(1, 5000, 100):
        values = ", ".join(f"({i}, 'u{i}', 'n{i}', 'u{i}@example.com', 0)" for i in range(a, b + 1))
        keys = [k for i in range(a, b + 1) for k in env.keys(i, f"u{i}")]
        yield keys, [f"INSERT INTO users VALUES {values}"]


def round_rename(env: BinlogEnv) -> Iterator[tuple[list[str], list[str]]]:
    # Several statements per transaction: kills land inside multi-statement transactions.
    for a, b in _chunks(1, 5000, 500):
        keys = [k for i in range(a, b + 1) for k in env.keys(i, f"u{i}") + env.keys(i, f"r{i}")]
        yield (
            keys,
            [
                f"UPDATE users SET user_name = CONCAT('r', id) WHERE id BETWEEN {x} AND {y}"
                for x, y in _chunks(a, b, 100)
            ],
        )


def round_flip(env: BinlogEnv) -> Iterator[tuple[list[str], list[str]]]:
    for a, b in _chunks(1, 5000, 250):
        keys = [k for i in range(a, b + 1) for k in env.keys(i, f"r{i}")]
        yield (
            keys,
            [
                "UPDATE users SET state = IF(id % 3 = 0, 1, 0), nickname = CONCAT('f', id) "
                f"WHERE id BETWEEN {a} AND {b}"
            ],
        )


def round_mixed(env: BinlogEnv) -> Iterator[tuple[list[str], list[str]]]:
    for a, b in _chunks(1, 2000, 200):  # 2000 deletes
        yield (
            [k for i in range(a, b + 1) for k in env.keys(i, f"r{i}")],
            [f"DELETE FROM users WHERE id BETWEEN {a} AND {b}"],
        )
    for a, b in _chunks(2001, 3000, 100):  # 1000 primary-key changes
        keys = [
            k for i in range(a, b + 1) for k in env.keys(i, f"r{i}") + env.keys(i + 10_000, f"r{i}")
        ]
        yield keys, [f"UPDATE users SET id = id + 10000 WHERE id BETWEEN {a} AND {b}"]
    for a, b in _chunks(3001, 5000, 250):  # 2000 renames back
        keys = [k for i in range(a, b + 1) for k in env.keys(i, f"r{i}") + env.keys(i, f"m{i}")]
        yield keys, [f"UPDATE users SET user_name = CONCAT('m', id) WHERE id BETWEEN {a} AND {b}"]


ROUNDS: list[Round] = [round_insert, round_rename, round_flip, round_mixed]  # 20,000 changes


def play(env: BinlogEnv, rounds: list[Round], *, pause: float = 0.1) -> None:
    """Write every round; after each, wait for the sidecar and check the round's keys."""
    rng = random.Random(11)
    for write_round in rounds:
        touched: list[str] = []
        for keys, statements in write_round(env):
            env.set_keys(keys)
            touched += keys
            if len(statements) == 1:
                env.sql(statements[0])
            else:
                env.transaction(statements)
            time.sleep(rng.uniform(0, pause))
        env.sync_point(timeout=120)
        left = env.existing(touched)
        assert not left, (
            f"{write_round.__name__}: {len(left)} of {len(touched)} keys were not invalidated "
            f"after their last change, e.g. {left[:5]}"
        )
    env.assert_index_matches_table()


def test_sigkill_at_random_points_loses_no_invalidation(binlog_env: BinlogEnv) -> None:
    env = binlog_env
    checkpoint = env.root_url.replace(f"/{env.schema}", "/cachesync")
    sidecar = SidecarProcess(
        env.settings_env(CACHESYNC_CHECKPOINT_URL=checkpoint), env.tmp / "sidecar.log"
    )
    sidecar.start()
    sidecar.wait_for_log("streaming binlog from")
    done = threading.Event()
    kills: list[float] = []
    failures: list[BaseException] = []

    def killer() -> None:
        rng = random.Random(3)
        try:
            while not done.is_set():
                done.wait(rng.uniform(0.1, 0.7))
                if done.is_set():
                    break
                sidecar.kill()
                kills.append(time.monotonic())
                sidecar.start()
                sidecar.wait_for_log(
                    "streaming binlog from", timeout=60, occurrences=sidecar.starts
                )
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        try:
            play(env, ROUNDS)
        finally:
            done.set()
            thread.join(90)
        assert not failures, failures
        assert len(kills) >= 5, f"only {len(kills)} kills happened"
        assert "Traceback" not in sidecar.output()
        assert sidecar.terminate() == 0
    finally:
        sidecar.kill()
    # Every restart resumed from a checkpoint, never from the server's current position.
    assert sidecar.output().count("no checkpoint") == 1


def test_mariadb_restart_under_the_sidecar(binlog_env: BinlogEnv) -> None:
    env = binlog_env
    sidecar = env.sidecar()
    with running(sidecar):
        env.sql(
            "INSERT INTO users VALUES "
            + ", ".join(f"({i}, 'u{i}', 'n', NULL, 0)" for i in range(1, 1001))
        )
        env.sync_point()
        before = [k for i in range(1, 1001) for k in env.keys(i, f"u{i}") + env.keys(i, f"x{i}")]
        env.set_keys(before)
        # A change the sidecar may not have read yet when the server goes down.
        env.sql("UPDATE users SET user_name = CONCAT('x', id) WHERE id BETWEEN 1 AND 1000")
        services.mariadb_restart(downtime=1.0)
        after = [k for i in range(1, 501) for k in env.keys(i, f"x{i}") + env.keys(i, f"y{i}")]
        env.set_keys(after)
        env.sql(
            "UPDATE users SET user_name = CONCAT('y', id), state = 1 WHERE id BETWEEN 1 AND 500"
        )
        env.sync_point(timeout=120)
        assert env.existing(before + after) == []
        env.assert_index_matches_table()


def test_standby_takes_over_when_the_leader_is_killed(binlog_env: BinlogEnv) -> None:
    env = binlog_env
    leader = SidecarProcess(env.settings_env(), env.tmp / "leader.log").start()
    leader.wait_for_log("streaming binlog from")
    standby_env = env.settings_env(CACHESYNC_SERVER_ID=str(env.server_id + 1))
    standby = SidecarProcess(standby_env, env.tmp / "standby.log").start()
    standby.wait_for_log("standby: another sidecar holds lock")
    try:
        # The leader dies in the middle of a stream of changes.
        writer_done = threading.Event()

        def write() -> None:
            for a, b in _chunks(1, 3000, 100):
                env.set_keys([k for i in range(a, b + 1) for k in env.keys(i, f"u{i}")])
                env.sql(
                    "INSERT INTO users VALUES "
                    + ", ".join(f"({i}, 'u{i}', 'n', NULL, 0)" for i in range(a, b + 1))
                )
                time.sleep(0.02)
            writer_done.set()

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        time.sleep(0.3)
        leader.kill()
        killed = time.monotonic()
        standby.wait_for_log("streaming binlog from", timeout=15)
        takeover = time.monotonic() - killed
        writer.join(60)
        assert writer_done.is_set()
        env.sync_point()
        keys = [k for i in range(1, 3001) for k in env.keys(i, f"u{i}")]
        assert env.existing(keys) == []
        env.assert_index_matches_table()
        assert takeover < 5, f"the standby took {takeover:.1f}s to take over"

        # The old leader comes back as a standby; stopping the new leader hands back.
        leader.start()
        leader.wait_for_log("standby: another sidecar holds lock", occurrences=1)
        assert standby.terminate() == 0
        leader.wait_for_log("streaming binlog from", occurrences=2, timeout=15)
        env.set_keys(env.keys(1, "u1") + env.keys(1, "z1"))
        env.sql("UPDATE users SET user_name = 'z1' WHERE id = 1")
        env.sync_point()
        assert env.existing(env.keys(1, "u1") + env.keys(1, "z1")) == []
    finally:
        for process in (leader, standby):
            process.kill()
