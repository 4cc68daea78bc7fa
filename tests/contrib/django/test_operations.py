"""``manage.py cachesync_listen --metrics-port``: the Django twin serves the same endpoints."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.contrib.django.test_commands import Child
from tests.integration.binlog.harness import wait_for
from tests.support.services import free_port

pytestmark = pytest.mark.services


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


@pytest.fixture
def twin(tmp_path: Path) -> Iterator[Any]:
    started: list[Child] = []

    def start(*args: str) -> Child:
        started.append(Child(tmp_path, *args))
        return started[-1]

    yield start
    for c in started:
        c.close()


def test_manage_py_listen_serves_metrics_health_and_readiness(
    clean: Any, twin: Any, es_url: str
) -> None:
    run = uuid.uuid4().hex[:8]
    port = free_port()
    listen: Child = twin(
        "cachesync_listen",
        "--es-url",
        es_url,
        "--server-id",
        str(50_000 + int(run, 16) % 10_000),
        "--name",
        f"csdj-ops-{run}",
        "--metrics-port",
        str(port),
        "--metrics-host",
        "127.0.0.1",
        "--log-format",
        "json",
    )
    listen.wait_for("streaming binlog", timeout=60)
    wait_for(lambda: _get(port, "/readyz")[0] == 200, 30, "/readyz")
    assert json.loads(_get(port, "/healthz")[1])["ok"] is True
    samples = {
        s.name: s.value
        for family in text_string_to_metric_families(_get(port, "/metrics")[1])
        for s in family.samples
    }
    assert samples["cachesync_leader"] == 1.0
    assert 0.0 <= samples["cachesync_source_lag_seconds"] < 10.0
    assert listen.terminate() == 0, listen.output()
    # --log-format reached the CLI: the sidecar's own lines are JSON objects.
    ours = [line for line in listen.output().splitlines() if '"logger": "cachesync' in line]
    assert ours and all(json.loads(line)["message"] for line in ours)
