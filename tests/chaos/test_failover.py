"""Primary failover: the sidecar resumes on the promoted replica from its GTID checkpoint.

Two private MariaDB servers (tests/support/replica.py): a primary whose binlog
files were rotated a few times, and a GTID replica with ``log_slave_updates``
whose files are named and numbered differently. The sidecar (a real ``cachesync
listen`` process) is frozen with SIGSTOP while the primary writes; the replica
catches up; the primary is SIGKILLed and the replica promoted. Then either a new
sidecar starts against the promoted server with the same checkpoint, or the
frozen sidecar, whose ``mysql_url`` names both servers, is thawed and follows.

What must hold: every key touched before and after the failover is gone, the
index equals the table, and no document's Elasticsearch version went
backwards (versions made from file index and offset would restart on the
replica's ``replica-bin.000001``, so the promoted server's changes would lose
their version conflicts and leave stale documents).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest
import redis as redis_lib
from elasticsearch import Elasticsearch

from cachesync.binlog.checkpoint import ResumePoint
from cachesync.binlog.gtid import MariaDBGtidState
from cachesync.binlog.positions import first_point
from cachesync.changes import GtidPosition
from tests.integration.binlog.harness import BinlogEnv, SidecarProcess
from tests.integration.binlog.test_gtid import _ids, _source, _take, _write
from tests.integration.binlog.test_source import _drain
from tests.support import services as svc
from tests.support.replica import ReplicaPair

pytestmark = [pytest.mark.services, pytest.mark.chaos]


@pytest.fixture(scope="module")
def shared_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaPair]:
    """One primary + replica for the whole module (installing and starting two servers
    costs seconds); :func:`pair` resets it between tests."""
    pair = ReplicaPair.start(tmp_path_factory.mktemp("pair"))
    try:
        yield pair
    finally:
        pair.stop()


@pytest.fixture
def pair(shared_pair: ReplicaPair) -> Iterator[ReplicaPair]:
    """The shared pair as freshly started: reset after each test, even a failed one (a
    killed primary is restarted, the promoted replica attached again)."""
    try:
        yield shared_pair
    finally:
        shared_pair.reset()


def _env(pair: ReplicaPair, services: dict[str, str], tmp: Path) -> BinlogEnv:
    schema = f"csfo_{uuid.uuid4().hex[:8]}"
    env = BinlogEnv(
        schema=schema,
        root_url=pair.primary.url(database=schema),
        sidecar_url=pair.primary.url(svc.SIDECAR_USER, svc.SIDECAR_PASSWORD, schema),
        redis_url=services["CACHESYNC_REDIS_URL"],
        es_url=services["CACHESYNC_ES_URL"],
        tmp=tmp,
        redis=redis_lib.Redis.from_url(services["CACHESYNC_REDIS_URL"], socket_timeout=5),
        es=Elasticsearch(services["CACHESYNC_ES_URL"], request_timeout=30),
    )
    pair.primary.sql(f"CREATE DATABASE `{schema}`")
    env.create_users()
    return env


def _on(env: BinlogEnv, url: str, sidecar_url: str) -> BinlogEnv:
    return dataclasses.replace(env, root_url=url, sidecar_url=sidecar_url, _conn=None)


def _versions(env: BinlogEnv) -> dict[str, int]:
    env.es.indices.refresh(index=env.index)
    ids = [str(i) for i in env.rows()]
    found = env.es.mget(index=env.index, ids=ids)["docs"]
    return {d["_id"]: int(d["_version"]) for d in found if d.get("found")}


def _touch(env: BinlogEnv, ids: range, prefix: str) -> list[str]:
    """Rename users *ids* to ``<prefix><id>`` in one transaction; returns old and new keys."""
    rows = env.rows()
    keys = [k for i in ids for k in env.keys(i, rows[i]["user_name"]) + env.keys(i, f"{prefix}{i}")]
    env.set_keys(keys)
    env.transaction(
        [f"UPDATE users SET user_name = CONCAT('{prefix}', id) WHERE id = {i}" for i in ids]
    )
    return keys


def _insert(env: BinlogEnv, ids: range) -> list[str]:
    keys = [k for i in ids for k in env.keys(i, f"u{i}")]
    env.set_keys(keys)
    values = ", ".join(f"({i}, 'u{i}', 'n{i}', 'u{i}@example.com', 0)" for i in ids)
    env.sql(f"INSERT INTO users VALUES {values}")
    return keys


def _delete(env: BinlogEnv, ids: range) -> list[str]:
    rows = env.rows()
    keys = [k for i in ids for k in env.keys(i, rows[i]["user_name"])]
    env.set_keys(keys)
    env.sql(f"DELETE FROM users WHERE id BETWEEN {ids.start} AND {ids.stop - 1}")
    return keys


def _before_failover(env: BinlogEnv, sidecar: SidecarProcess) -> tuple[list[str], dict[str, int]]:
    """Changes applied from the primary, then more while the sidecar is frozen."""
    keys = _insert(env, range(1, 301))
    keys += _touch(env, range(1, 101), "a")
    env.sync_point()
    assert env.existing(keys) == []
    versions = _versions(env)
    assert len(versions) == 301
    assert sidecar.proc is not None
    os.kill(sidecar.proc.pid, signal.SIGSTOP)
    # Written while the sidecar is frozen: only the replica's binlog will still have them.
    touched = _touch(env, range(1, 51), "b")
    touched += _delete(env, range(101, 121))
    touched += _insert(env, range(301, 351))
    touched += _touch(env, range(121, 161), "c")
    return touched, versions


def _fail_over(pair: ReplicaPair) -> None:
    pair.wait_caught_up()
    pair.primary.kill()
    pair.promote()


def _after_failover(env: BinlogEnv) -> list[str]:
    """Changes on the promoted server, several to documents last written from the primary."""
    keys = _touch(env, range(21, 81), "d")
    keys += _touch(env, range(161, 201), "e")
    keys += _insert(env, range(351, 371))
    keys += _delete(env, range(201, 211))
    return keys


def _assert_converged(env: BinlogEnv, keys: list[str], before: dict[str, int]) -> None:
    env.sync_point(timeout=120)
    stale = env.existing(keys)
    assert stale == [], f"{len(stale)} of {len(keys)} touched keys survived: {stale[:10]}"
    env.assert_index_matches_table()
    after = _versions(env)
    backwards = {i: (v, after[i]) for i, v in before.items() if i in after and after[i] < v}
    assert backwards == {}, f"versions went backwards (before, after): {backwards}"
    # Documents changed after the failover carry larger versions than the primary gave them.
    for i in range(21, 51):
        assert after[str(i)] > before[str(i)]


def test_restarted_against_the_promoted_replica_with_the_same_checkpoint(
    pair: ReplicaPair, services: dict[str, str], tmp_path: Path
) -> None:
    env = _env(pair, services, tmp_path)
    first = SidecarProcess(env.settings_env(), tmp_path / "sidecar.log").start()
    first.wait_for_log("streaming binlog from")
    touched, versions = _before_failover(env, first)
    _fail_over(pair)
    first.kill()  # SIGKILL reaches a stopped process too

    promoted = _on(
        env,
        pair.replica.url(database=env.schema),
        pair.replica.url(svc.SIDECAR_USER, svc.SIDECAR_PASSWORD, env.schema),
    )
    second = SidecarProcess(promoted.settings_env(), tmp_path / "sidecar.log").start()
    second.wait_for_log("streaming binlog from", occurrences=2)
    touched += _after_failover(promoted)
    _assert_converged(promoted, touched, versions)
    assert "replica-bin" in second.output()
    assert second.terminate() == 0


@pytest.mark.parametrize("checkpoint", ["file", "table"])
def test_multi_host_url_follows_the_promoted_replica_without_a_restart(
    pair: ReplicaPair, services: dict[str, str], tmp_path: Path, checkpoint: str
) -> None:
    """With the default checkpoint table (in the watched database) the checkpoint moves along."""
    env = _env(pair, services, tmp_path)
    # The table checkpoint needs a user that may write it (the sidecar user may only read).
    auth = "root" if checkpoint == "table" else f"{svc.SIDECAR_USER}:{svc.SIDECAR_PASSWORD}"
    both = (
        f"mysql://{auth}@{svc.HOST}:{pair.primary.port},{svc.HOST}:{pair.replica.port}/{env.schema}"
    )
    settings = env.settings_env(CACHESYNC_MYSQL_URL=both)
    if checkpoint == "table":
        del settings["CACHESYNC_CHECKPOINT_URL"]
    sidecar = SidecarProcess(settings, tmp_path / "sidecar.log").start()
    sidecar.wait_for_log("streaming binlog from")
    touched, versions = _before_failover(env, sidecar)
    _fail_over(pair)
    assert sidecar.proc is not None
    os.kill(sidecar.proc.pid, signal.SIGCONT)

    promoted = _on(
        env,
        pair.replica.url(database=env.schema),
        pair.replica.url(svc.SIDECAR_USER, svc.SIDECAR_PASSWORD, env.schema),
    )
    sidecar.wait_for_log(f"failover: following {svc.HOST}:{pair.replica.port}", timeout=120)
    touched += _after_failover(promoted)
    _assert_converged(promoted, touched, versions)
    assert sidecar.starts == 1 and sidecar.alive()
    assert sidecar.terminate() == 0
    if checkpoint == "table":
        saved = pair.replica.sql(
            "SELECT position FROM cachesync_checkpoint WHERE name = %s", (env.schema,), env.schema
        )
        point = ResumePoint.decode(saved[0][0]) if saved else None
        assert point is not None and point.file.startswith("replica-bin"), saved
        assert point.gtid is not None
        assert MariaDBGtidState.parse(pair.replica.gtid_binlog_pos()).covers(point.gtid)


def test_a_server_behind_the_checkpoint_is_refused_with_a_clear_error(
    pair: ReplicaPair, services: dict[str, str], tmp_path: Path
) -> None:
    """A replica promoted before it caught up lacks handled transactions: named, exit 2."""
    env = _env(pair, services, tmp_path)
    pair.wait_caught_up()
    pair.replica.sql("STOP SLAVE")
    first = SidecarProcess(env.settings_env(), tmp_path / "sidecar.log").start()
    first.wait_for_log("streaming binlog from")
    keys = _insert(env, range(1, 51))
    env.sync_point()
    assert env.existing(keys) == []
    assert first.terminate() == 0
    pair.primary.kill()
    pair.promote()
    behind = _on(
        env,
        pair.replica.url(database=env.schema),
        pair.replica.url(svc.SIDECAR_USER, svc.SIDECAR_PASSWORD, env.schema),
    )
    second = SidecarProcess(behind.settings_env(), tmp_path / "sidecar.log").start()
    assert second.proc is not None
    assert second.proc.wait(60) == 2
    out = second.output().rsplit("----- start 1 -----", 1)[-1]
    assert "has not reached" in out and "Traceback" not in out, out


def test_a_resume_inside_a_transaction_on_another_server_replays_that_transaction(
    pair: ReplicaPair, services: dict[str, str], tmp_path: Path
) -> None:
    """Rows events may be split otherwise on another server: at-least-once, never a skip."""
    env = _env(pair, services, tmp_path)
    conn = pymysql.connect(**env.sidecar_params)
    try:
        start = first_point(conn, 0.0)
    finally:
        conn.close()
    _write(env, 1, 40)
    _write(env, 41, 10)
    with _source(env, start) as source:
        first = _take(source, 15)
        inside = source.resume_point
    assert isinstance(inside.handled, GtidPosition)
    pair.wait_caught_up()
    replica = _on(
        env,
        pair.replica.url(database=env.schema),
        pair.replica.url(svc.SIDECAR_USER, svc.SIDECAR_PASSWORD, env.schema),
    )
    with _source(replica, inside) as source:
        rest = _drain(source, 50)
    assert _ids(first) == list(range(1, 16))
    assert _ids(rest) == list(range(1, 51)), "the transaction in progress is replayed whole"
    # On the server the point was taken on, the resume is exact.
    with _source(env, inside) as source:
        assert _ids(_drain(source, 35)) == list(range(16, 51))


def test_reading_a_replicas_binlog_offloads_the_primary(
    pair: ReplicaPair, services: dict[str, str], tmp_path: Path
) -> None:
    """A single server in mysql_url is followed even read-only: the sidecar reads the replica."""
    env = _env(pair, services, tmp_path)
    pair.wait_caught_up()
    on_replica = env.settings_env(
        CACHESYNC_MYSQL_URL=pair.replica.url(svc.SIDECAR_USER, svc.SIDECAR_PASSWORD, env.schema)
    )
    sidecar = SidecarProcess(on_replica, tmp_path / "sidecar.log").start()
    sidecar.wait_for_log("streaming binlog from binlog:replica-bin.")
    keys = _insert(env, range(1, 101))  # written to the primary
    keys += _touch(env, range(1, 51), "r")
    keys += _delete(env, range(51, 61))
    env.sync_point()
    assert env.existing(keys) == []
    env.assert_index_matches_table()
    assert sidecar.terminate() == 0
