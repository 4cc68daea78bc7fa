"""What an operator sees of a running ``cachesync listen``: /metrics, /healthz, /readyz, status.

* a scrape of ``/metrics`` during writes finds every metric of the catalogue's
  operational set with sane values;
* ``/readyz`` answers 503 while the leader's lag is above ``ready_max_lag``
  (its Redis frozen) and 200 again once it caught up; ``/healthz`` stays 200;
* honest lag: an idle sidecar, and one that sees traffic only on another
  database, report under 2 s (status and gauge) although the checkpoint table
  lives on the watched server; a paused (SIGSTOP) sidecar's lag grows.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cachesync.outbox.store import OutboxStore
from tests.integration.binlog.harness import ROOT, BinlogEnv, SidecarProcess, wait_for
from tests.support import services as svc

pytestmark = pytest.mark.services


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:  # not listening (yet)
        return 0, ""


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of one scrape."""
    status, text = _get(port, "/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _status(env: dict[str, str]) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "cachesync.cli", "status", "--json"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def _metrics_env(env: BinlogEnv, port: int, **extra: str) -> dict[str, str]:
    return env.settings_env(
        CACHESYNC_METRICS_PORT=str(port), CACHESYNC_METRICS_HOST="127.0.0.1", **extra
    )


@contextlib.contextmanager
def _writing(env: BinlogEnv, first: int, every: float = 0.1) -> Iterator[list[int]]:
    """Insert users from *first* on every *every* seconds in a thread; yields the ids written."""
    written: list[int] = []
    stop = threading.Event()

    def write() -> None:
        conn = env.connect()
        try:
            n = first
            while not stop.is_set():
                with conn.cursor() as cur:
                    cur.execute(f"INSERT INTO users VALUES ({n}, 'u{n}', 'N', NULL, 0)")
                written.append(n)
                n += 1
                stop.wait(every)
        finally:
            conn.close()

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    try:
        yield written
    finally:
        stop.set()
        thread.join(10)


def test_metrics_of_a_running_listen_during_writes(binlog_env: BinlogEnv) -> None:
    env = binlog_env
    port = svc.free_port()
    # The index refuses the email field: that document becomes a dead letter.
    env.es.indices.create(
        index=env.index,
        mappings={
            "dynamic": "strict",
            "properties": {"username": {"type": "keyword"}, "nickname": {"type": "keyword"}},
        },
    )
    OutboxStore.from_url(env.root_url).create_table()
    settings = _metrics_env(env, port, CACHESYNC_OUTBOX_URL=env.root_url)
    sidecar = SidecarProcess(settings, env.tmp / "metrics.log").start()
    sidecar.wait_for_log("streaming binlog from", timeout=60)
    sidecar.wait_for_log("serving /metrics", timeout=10)
    table = f"{env.schema}.users"
    with _writing(env, first=1) as written:
        wait_for(lambda: len(written) >= 20, 60, "20 writes")
        during = _scrape(port)
        env.sql("INSERT INTO users VALUES (999, 'rejected', 'R', 'r@x', 0)")
        wait_for(lambda: len(written) >= 40, 60, "40 writes")

    def applied_all() -> bool:
        m = _scrape(port)
        return m.get(("cachesync_changes_total", (("table", table),)), 0) >= len(written) + 1

    wait_for(applied_all, 60, "every change counted")
    wait_for(
        lambda: _scrape(port).get(("cachesync_dead_letters_total", ()), 0) >= 1,
        60,
        "the rejected document's dead letter",
    )
    # The document lane applies on its own thread, behind the reader's count.
    applied_docs = ("cachesync_actions_total", (("result", "applied"), ("sink", "elasticsearch")))
    wait_for(
        lambda: _scrape(port).get(applied_docs, 0) >= len(written),
        60,
        "every document applied",
    )
    m = _scrape(port)
    assert sidecar.alive(), sidecar.output()

    assert during[("cachesync_leader", ())] == 1.0
    assert 0.0 <= during[("cachesync_source_lag_seconds", ())] < 10.0
    changes = m[("cachesync_changes_total", (("table", table),))]
    assert changes == len(written) + 1
    assert m[("cachesync_actions_total", (("result", "applied"), ("sink", "redis")))] >= changes
    assert m[("cachesync_actions_total", (("result", "applied"), ("sink", "elasticsearch")))] >= (
        changes - 1
    )
    assert m[("cachesync_actions_total", (("result", "failed"), ("sink", "elasticsearch")))] >= 1
    lag = m[("cachesync_source_lag_seconds", ())]
    assert 0.0 <= lag < 5.0, lag
    for sink in ("redis", "elasticsearch"):
        count = m[("cachesync_invalidation_latency_seconds_count", (("sink", sink),))]
        total = m[("cachesync_invalidation_latency_seconds_sum", (("sink", sink),))]
        assert count == changes, (sink, count, changes)
        # Binlog timestamps are whole seconds: each latency is under about 1 s + apply time.
        assert 0.0 <= total / count < 3.0, (sink, total / count)
    assert m[("cachesync_batch_rows_sum", ())] == changes
    assert 1 <= m[("cachesync_batch_rows_count", ())] <= changes
    assert m[("cachesync_dead_letters_total", ())] >= 1
    for gauge in ("cachesync_retry_backlog", "cachesync_outbox_backlog"):
        value = m[(gauge, ())]
        assert not math.isnan(value) and value >= 0, (gauge, value)
    assert m[("cachesync_leader", ())] == 1.0

    status, body = _get(port, "/healthz")
    assert status == 200 and json.loads(body)["ok"] is True
    status, body = _get(port, "/readyz")
    assert status == 200 and "leading" in json.loads(body)["reason"]
    assert _get(port, "/nothing")[0] == 404
    assert sidecar.terminate() == 0


def test_readyz_is_503_while_the_leader_lags_and_200_after(binlog_env: BinlogEnv) -> None:
    env = binlog_env
    port = svc.free_port()
    cache = svc.start_redis(dir=env.tmp / "redis")
    settings = _metrics_env(env, port, CACHESYNC_REDIS_URL=cache.url, CACHESYNC_READY_MAX_LAG="2")
    sidecar = SidecarProcess(settings, env.tmp / "ready.log").start()
    try:
        sidecar.wait_for_log("streaming binlog from", timeout=60)
        wait_for(lambda: _get(port, "/readyz")[0] == 200, 30, "ready while streaming")
        assert cache.pid is not None
        os.kill(cache.pid, signal.SIGSTOP)  # accepts connections, never answers
        answers: list[tuple[int, str]] = []
        try:
            with _writing(env, first=1, every=0.2):

                def not_ready() -> bool:
                    answers.append(_get(port, "/readyz"))
                    return answers[-1][0] == 503

                wait_for(not_ready, 90, "/readyz 503 while Redis is frozen")
                assert _get(port, "/healthz")[0] == 200  # lagging, not wedged
        finally:
            os.kill(cache.pid, signal.SIGCONT)
        reason = json.loads(answers[-1][1])["reason"]
        assert "above ready_max_lag 2s" in reason, reason
        wait_for(lambda: _get(port, "/readyz")[0] == 200, 120, "/readyz 200 after catching up")
        assert json.loads(_get(port, "/readyz")[1])["ok"] is True
        assert sidecar.alive(), sidecar.output()
        assert sidecar.terminate() == 0
    finally:
        sidecar.kill()
        cache.stop()


def test_lag_is_honest_idle_with_other_databases_busy_and_when_paused(
    binlog_env: BinlogEnv,
) -> None:
    env = binlog_env
    port = svc.free_port()
    # The checkpoint table on the watched server: its own writes are the newest events
    # of an idle binlog (which is what made the old lag grow while idle).
    settings = _metrics_env(env, port, CACHESYNC_CHECKPOINT_URL=env.root_url)
    sidecar = SidecarProcess(settings, env.tmp / "lag.log").start()
    other = f"{env.schema[:40]}_other"
    try:
        sidecar.wait_for_log("streaming binlog from", timeout=60)
        env.sql("INSERT INTO users VALUES (1, 'ann', 'A', NULL, 0)")
        wait_for(lambda: not env.existing(env.keys(1, "ann")), 30, "first change applied")
        # Idle past several idle checkpoint saves and status reports (1 s apart each):
        # a lag that grew while idle (the old bug) would read 4 s here, twice the bound.
        time.sleep(4)
        idle = _status(settings)
        assert idle["lag_from"] == "report", idle
        assert idle["lag_seconds"] is not None and float(idle["lag_seconds"]) < 2.0, idle
        assert _scrape(port)[("cachesync_source_lag_seconds", ())] < 2.0

        # Traffic on another database only.
        env.sql(f"CREATE DATABASE `{other}`")
        env.sql(f"CREATE TABLE `{other}`.t (id INT PRIMARY KEY, v VARCHAR(20))")
        stop = threading.Event()

        def busy() -> None:
            conn = env.connect()
            n = 0
            while not stop.is_set():
                n += 1
                with conn.cursor() as cur:
                    cur.execute(f"INSERT INTO `{other}`.t VALUES ({n}, 'x')")
                stop.wait(0.05)
            conn.close()

        thread = threading.Thread(target=busy, daemon=True)
        thread.start()
        try:
            time.sleep(3)
            for _ in range(3):
                busy_status = _status(settings)
                assert float(busy_status["lag_seconds"]) < 2.0, busy_status  # type: ignore[arg-type]
                assert _scrape(port)[("cachesync_source_lag_seconds", ())] < 2.0
                time.sleep(1)
        finally:
            stop.set()
            thread.join(10)

        # Paused: the lag reported by status grows.
        assert sidecar.proc is not None
        os.kill(sidecar.proc.pid, signal.SIGSTOP)
        try:
            env.sql("INSERT INTO users VALUES (2, 'bob', 'B', NULL, 0)")
            # A report stays fresh for SidecarReport.STALE (5 s); after that the lag counts
            # up from the last one: past 5 s after 7 s, and 2 s more after 3 s more.
            time.sleep(7)
            first = float(_status(settings)["lag_seconds"])  # type: ignore[arg-type]
            time.sleep(3)
            second = float(_status(settings)["lag_seconds"])  # type: ignore[arg-type]
            assert first >= 5.0, first
            assert second >= first + 2.0, (first, second)
        finally:
            os.kill(sidecar.proc.pid, signal.SIGCONT)
        wait_for(lambda: not env.existing(env.keys(2, "bob")), 30, "paused change applied")

        def caught_up() -> bool:
            return float(_status(settings)["lag_seconds"]) < 2.0  # type: ignore[arg-type]

        wait_for(caught_up, 30, "lag back under 2 s")
        assert sidecar.terminate() == 0
    finally:
        sidecar.kill()
        env.sql(f"DROP DATABASE IF EXISTS `{other}`")


PASSWORDS = ("sidecar-pw", "redis-secret", "es-secret")


def test_json_logs_of_a_run_with_passwords_everywhere(
    binlog_env: BinlogEnv, kafka_bootstrap: str
) -> None:
    """One JSON object per line, no kafka-python chatter below WARNING, and no password,
    with a password in the MariaDB, Redis and Elasticsearch URLs (the settings have no
    Kafka SASL credentials to leak)."""
    env = binlog_env
    port = svc.free_port()
    dead_redis = svc.free_port()
    settings = _metrics_env(
        env,
        port,
        CACHESYNC_REDIS_URL=f"redis://default:redis-secret@127.0.0.1:{dead_redis}/0",
        CACHESYNC_ES_URL=env.es_url.replace("http://", "http://elastic:es-secret@"),
        CACHESYNC_KAFKA_BOOTSTRAP=kafka_bootstrap,
        CACHESYNC_LOG_FORMAT="json",
    )
    sidecar = SidecarProcess(settings, env.tmp / "json.log").start()
    try:
        sidecar.wait_for_log("streaming binlog from", timeout=60)
        env.sql("INSERT INTO users VALUES (1, 'ann', 'A', NULL, 0)")
        sidecar.wait_for_log("handed", timeout=60)
        assert _get(port, "/metrics")[0] == 200
        assert sidecar.terminate() == 0
    finally:
        sidecar.kill()
    lines = [line for line in sidecar.output().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines if not line.startswith("----- start")]
    assert {"time", "level", "logger", "message"} <= set(records[0])
    assert any(r["level"] == "WARNING" and "handed" in r["message"] for r in records)
    assert any("redis://default:***@" in r["message"] for r in records)
    chatter = [r for r in records if r["logger"].startswith("kafka") and r["level"] == "INFO"]
    assert chatter == []
    for password in PASSWORDS:
        assert password not in sidecar.output(), password


def test_retry_consumer_serves_metrics_and_health(
    binlog_env: BinlogEnv, kafka_bootstrap: str
) -> None:
    env = binlog_env
    port = svc.free_port()
    settings = _metrics_env(
        env, port, CACHESYNC_KAFKA_BOOTSTRAP=kafka_bootstrap, CACHESYNC_OUTBOX_URL=env.root_url
    )
    OutboxStore.from_url(env.root_url).create_table()
    log = env.tmp / "retry.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cachesync.cli", "retry", "--session-timeout-ms", "6000"],
            env=settings,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        def serving() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return _get(port, "/healthz")[0] == 200
            except OSError:
                return False

        wait_for(serving, 90, "the retry consumer's /healthz")
        assert _get(port, "/readyz")[0] == 200
        m = _scrape(port)
        assert m[("cachesync_retry_backlog", ())] == 0.0  # the consumer holds nothing
        assert m[("cachesync_outbox_backlog", ())] == 0.0
        assert m[("cachesync_dead_letters_total", ())] == 0.0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_a_standby_is_ready_and_a_sidecar_without_its_database_is_not(
    binlog_env: BinlogEnv,
) -> None:
    env = binlog_env
    leader_port, standby_port, lost_port = svc.free_port(), svc.free_port(), svc.free_port()
    leader = SidecarProcess(_metrics_env(env, leader_port), env.tmp / "leader.log").start()
    leader.wait_for_log("streaming binlog from", timeout=60)
    standby = SidecarProcess(_metrics_env(env, standby_port), env.tmp / "standby.log").start()
    standby.wait_for_log("standby: another sidecar holds lock", timeout=60)
    closed = svc.free_port()
    lost = SidecarProcess(
        _metrics_env(
            env,
            lost_port,
            CACHESYNC_MYSQL_URL=f"mysql://cachesync_sidecar:sidecar-pw@127.0.0.1:{closed}/x",
            CACHESYNC_NAME=f"{env.schema}-lost",
        ),
        env.tmp / "lost.log",
    ).start()
    try:
        wait_for(lambda: _get(standby_port, "/readyz")[0] == 200, 30, "standby ready")
        assert "standby" in json.loads(_get(standby_port, "/readyz")[1])["reason"]
        assert _scrape(standby_port)[("cachesync_leader", ())] == 0.0
        assert _scrape(standby_port)[("cachesync_source_lag_seconds", ())] == 0.0
        assert _scrape(leader_port)[("cachesync_leader", ())] == 1.0

        def lost_not_ready() -> bool:
            assert lost.alive(), lost.output()
            return _get(lost_port, "/readyz")[0] == 503

        wait_for(lost_not_ready, 60, "/readyz 503 without the database")
        reason = json.loads(_get(lost_port, "/readyz")[1])["reason"]
        assert "not streaming, retrying" in reason and "sidecar-pw" not in reason
        assert _get(lost_port, "/healthz")[0] == 200  # retrying with backoff is alive

        # The leader goes: the standby takes over and says so.
        assert leader.terminate() == 0
        wait_for(lambda: _scrape(standby_port)[("cachesync_leader", ())] == 1.0, 60, "the takeover")
        assert _get(standby_port, "/readyz")[0] == 200
    finally:
        for process in (leader, standby, lost):
            process.kill()
