"""The operations flags of the commands: bad values are one line and exit 2; a relay serves
/metrics, /healthz and /readyz (on SQLite, so no service is needed)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support.services import free_port
from tests.unit.test_cli_bad_input import ROOT, assert_clean, run


def test_a_metrics_port_out_of_range_is_named(tmp_path: Path) -> None:
    result = run(tmp_path, "listen", "--metrics-port", "70000", "--mysql-url", "mysql://a@h/db")
    assert_clean(result, "metrics_port", "CACHESYNC_METRICS_PORT", "0..65535")


def test_a_bad_log_format_is_named(tmp_path: Path) -> None:
    result = run(
        tmp_path, "status", CACHESYNC_LOG_FORMAT="xml", CACHESYNC_MYSQL_URL="mysql://a@h/d"
    )
    assert_clean(result, "log_format", "CACHESYNC_LOG_FORMAT", "text or json")


def test_a_metrics_port_in_use_is_named(tmp_path: Path) -> None:
    holder = socket.create_server(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    try:
        result = run(
            tmp_path,
            "relay",
            "--outbox-url",
            f"sqlite:///{tmp_path / 'outbox.db'}",
            "--metrics-port",
            str(port),
            "--metrics-host",
            "127.0.0.1",
            CACHESYNC_REDIS_URL="redis://127.0.0.1:9/0",
        )
    finally:
        holder.close()
    assert_clean(result, "metrics_port", f"cannot listen on 127.0.0.1:{port}")


def _get(port: int, path: str) -> tuple[int, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
        return answer.status, answer.read().decode()


def test_a_relay_serves_metrics_and_health_and_logs_json(tmp_path: Path) -> None:
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CACHESYNC_")}
    environ.update(
        PYTHONPATH=str(ROOT),
        CACHESYNC_OUTBOX_URL=f"sqlite:///{tmp_path / 'outbox.db'}",
        CACHESYNC_METRICS_PORT=str(port),
        CACHESYNC_METRICS_HOST="127.0.0.1",
        CACHESYNC_LOG_FORMAT="json",
        CACHESYNC_REDIS_URL="redis://127.0.0.1:9/0",  # nothing pending: never contacted
    )
    log = tmp_path / "relay.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cachesync.cli", "relay", "--poll-interval", "0.2"],
            env=environ,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, body = _get(port, "/healthz")
                break
            except OSError:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        assert status == 200 and json.loads(body)["ok"] is True
        assert _get(port, "/readyz")[0] == 200
        samples = {
            s.name: s.value
            for family in text_string_to_metric_families(_get(port, "/metrics")[1])
            for s in family.samples
        }
        # The relay counted its table (created at start): nothing pending, nothing parked.
        assert samples["cachesync_outbox_backlog"] == 0.0
        assert samples["cachesync_retry_backlog"] == 0.0
        assert samples["cachesync_outbox_relayed_total"] == 0.0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert lines
    for line in lines:
        record = json.loads(line)  # every line is one JSON object
        assert {"time", "level", "logger", "message"} <= set(record)
    assert any("serving /metrics" in json.loads(line)["message"] for line in lines)
