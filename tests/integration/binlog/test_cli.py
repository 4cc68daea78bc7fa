"""``cachesync listen | reindex | status | verify`` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cachesync.binlog import ResumePoint
from tests.integration.binlog.harness import ROOT, BinlogEnv, SidecarProcess, wait_for

pytestmark = pytest.mark.services


def _cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cachesync.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_help_documents_every_option(binlog_env: BinlogEnv) -> None:
    env = binlog_env.settings_env()
    for command in ("listen", "reindex", "status", "verify"):
        result = _cli(env, command, "--help")
        assert result.returncode == 0, result.stderr
        for flag, variable in (
            ("--mysql-url", "CACHESYNC_MYSQL_URL"),
            ("--redis-url", "CACHESYNC_REDIS_URL"),
            ("--es-url", "CACHESYNC_ES_URL"),
            ("--kafka-bootstrap", "CACHESYNC_KAFKA_BOOTSTRAP"),
            ("--models", "CACHESYNC_MODELS"),
        ):
            assert flag in result.stdout and variable in result.stdout, (command, flag)
    assert "--reset-checkpoint" in _cli(env, "listen", "--help").stdout
    assert "--batch-size" in _cli(env, "reindex", "--help").stdout


def test_listen_sigterm_status_and_reindex(binlog_env: BinlogEnv) -> None:
    env = binlog_env
    settings = env.settings_env()
    sidecar = SidecarProcess(settings, env.tmp / "listen.log").start()
    try:
        sidecar.wait_for_log("streaming binlog from")
        env.set_keys(env.keys(1, "ann"))
        env.sql("INSERT INTO users VALUES (1, 'ann', 'A', NULL, 0)")
        env.sync_point()
        assert env.existing(env.keys(1, "ann")) == []

        status = _cli(settings, "status", "--json")
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["leader_connection"] is not None
        assert report["checkpoint"].startswith("binlog:mysql-bin.")
        assert report["lag_bytes"] is not None and report["lag_bytes"] >= 0
        # MariaDB: a GTID checkpoint, lag also counted in transactions.
        assert ";mariadb=0-" in report["checkpoint"] and "(GTID 0-" in report["server_position"]
        assert report["lag_transactions"] is not None and report["lag_transactions"] >= 0
        text = _cli(settings, "status").stdout
        for label in ("checkpoint", "server", "lag", "leader"):
            assert label in text

        # SIGTERM: the current batch finishes, the checkpoint is saved, exit code 0.
        env.sql("UPDATE users SET nickname = 'B' WHERE id = 1")
        after_update = env.master_status()
        wait_for(lambda: env.documents().get("1", {}).get("nickname") == "B", 30, "the update")
        assert sidecar.terminate() == 0
    finally:
        sidecar.kill()
    log = sidecar.output()
    assert "SIGTERM received, stopping after the current batch" in log
    assert "sidecar-pw" not in log, "passwords must never be logged"
    stored = json.loads((env.tmp / "checkpoint.json").read_text())[env.schema]
    point = ResumePoint.decode(stored["position"])
    assert (point.file, point.pos) >= after_update

    after = json.loads(_cli(settings, "status", "--json").stdout)
    assert after["leader_connection"] is None

    env.sql("INSERT INTO users VALUES (2, 'bo', 'b', NULL, 0), (3, 'cy', 'c', NULL, 1)")
    result = _cli(settings, "reindex", "User", "--batch-size", "2")
    assert result.returncode == 0, result.stderr
    assert "4 rows, 3 documents written" in result.stdout  # sentinel, ann, bo (cy: state 1)
    assert "reindex" in result.stderr  # the progress line
    assert set(env.documents()) == {"0", "1", "2"}


def test_listen_refuses_a_user_without_grants(binlog_env: BinlogEnv) -> None:
    env = binlog_env
    name = f"{env.schema[:20]}_ro"
    for host in ("127.0.0.1", "localhost"):
        env.sql(f"CREATE USER '{name}'@'{host}' IDENTIFIED BY 'ro-secret'")
        env.sql(f"GRANT SELECT ON `{env.schema}`.* TO '{name}'@'{host}'")
    try:
        url = env.sidecar_url.replace("cachesync_sidecar:sidecar-pw", f"{name}:ro-secret")
        result = _cli(env.settings_env(CACHESYNC_MYSQL_URL=url), "listen", timeout=60)
    finally:
        for host in ("127.0.0.1", "localhost"):
            env.sql(f"DROP USER IF EXISTS '{name}'@'{host}'")
    assert result.returncode == 2
    assert "lacks REPLICATION SLAVE, REPLICATION CLIENT" in result.stderr
    assert "ro-secret" not in result.stderr + result.stdout


def test_verify_finds_drift_and_repair_fixes_it(binlog_env: BinlogEnv) -> None:
    env = binlog_env
    settings = env.settings_env()
    env.sql("INSERT INTO users VALUES (1, 'ann', 'A', NULL, 0), (2, 'bo', 'B', NULL, 0)")
    assert _cli(settings, "reindex", "User", "--quiet").returncode == 0
    clean = _cli(settings, "verify")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "0 missing, 0 stale, 0 orphans" in clean.stdout

    env.es.index(
        index=env.index, id="2", document={"username": "bo", "nickname": "OLD"}, refresh=True
    )
    env.es.index(
        index=env.index, id="77", document={"username": "ghost", "nickname": "g"}, refresh=True
    )
    env.sql("INSERT INTO users VALUES (3, 'cy', 'C', NULL, 0)")  # nobody streams it
    drift = _cli(settings, "verify", "User")
    assert drift.returncode == 1, drift.stdout + drift.stderr
    assert "1 missing, 1 stale, 1 orphans" in drift.stdout
    assert "missing: 3" in drift.stdout and "stale: 2" in drift.stdout
    assert "orphans: 77" in drift.stdout

    repaired = _cli(settings, "verify", "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "3 repaired" in repaired.stdout
    assert _cli(settings, "verify").returncode == 0
    assert env.documents()["2"]["nickname"] == "B"
