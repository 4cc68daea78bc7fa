"""``cachesync retry`` and ``cachesync relay`` as the processes an operator runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from cachesync import DeleteKeys, Failure, TransientError
from cachesync.kafka import RetryQueue
from cachesync.outbox import KIND_FAILED, STATE_DONE, OutboxStore
from tests.integration.kafka.helpers import unique, wait_until

pytestmark = pytest.mark.services

ROOT = Path(__file__).resolve().parents[3]


def env(**values: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CACHESYNC_")}
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), clean.get("PYTHONPATH")]))
    clean.update(values)
    return clean


def test_retry_command_consumes_relays_and_stops_on_sigterm(
    kafka_bootstrap: str, mysql_url: str, redis_url: str, r: redis.Redis, tmp_path: Path
) -> None:
    retry, dead = unique("retry"), unique("dlq")
    outbox_url = f"sqlite:///{tmp_path / 'outbox.db'}"
    store = OutboxStore.from_url(outbox_url)
    store.create_table()
    tag = unique("cli")
    r.mset({f"{tag}:kafka": "cached", f"{tag}:outbox": "cached"})
    store.add(KIND_FAILED, [DeleteKeys((f"{tag}:outbox",))], attempts=1)
    log = tmp_path / "retry.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cachesync.cli",
                "retry",
                "--partitions",
                "2",
                "--session-timeout-ms",
                "6000",
            ],
            env=env(
                CACHESYNC_KAFKA_BOOTSTRAP=kafka_bootstrap,
                CACHESYNC_RETRY_TOPIC=retry,
                CACHESYNC_DEAD_LETTER_TOPIC=dead,
                CACHESYNC_MYSQL_URL=mysql_url,
                CACHESYNC_OUTBOX_URL=outbox_url,
                CACHESYNC_REDIS_URL=redis_url,
                CACHESYNC_NAME=tag,
            ),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until("the outbox row relayed", lambda: r.exists(f"{tag}:outbox") == 0, 30)
        # the command created the missing topics: a hand-off now reaches the consumer
        queue = RetryQueue(kafka_bootstrap, retry)
        queue.handle([Failure(DeleteKeys((f"{tag}:kafka",)), TransientError("down"))])
        queue.close()
        wait_until("the retried delete", lambda: r.exists(f"{tag}:kafka") == 0, 30)
        assert store.counts()[STATE_DONE] == 1
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
        assert time.monotonic() - start < 20
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = log.read_text()
    assert f"consuming {retry} as cachesync-retry.{tag}" in text and "relaying the outbox" in text


def test_relay_once_drains_a_sqlite_outbox(redis_url: str, r: redis.Redis, tmp_path: Path) -> None:
    outbox_url = f"sqlite:///{tmp_path / 'outbox.db'}"
    store = OutboxStore.from_url(outbox_url)
    store.create_table()
    tag = unique("relay")
    keys = [f"{tag}:{i}" for i in range(250)]
    r.mset({k: "cached" for k in keys})
    for i in range(0, 250, 10):
        store.add(KIND_FAILED, [DeleteKeys(tuple(keys[i : i + 10]))])
    done = subprocess.run(
        [sys.executable, "-m", "cachesync.cli", "relay", "--once", "--batch-size", "7"],
        env=env(CACHESYNC_OUTBOX_URL=outbox_url, CACHESYNC_REDIS_URL=redis_url),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "relayed 25 outbox row(s); pending: 0" in done.stdout
    assert r.exists(*keys) == 0


def test_commands_fail_clearly_without_kafka(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cachesync.cli", "dlq", "list"],
        env=env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "kafka_bootstrap" in done.stderr and "CACHESYNC_KAFKA_BOOTSTRAP" in done.stderr
