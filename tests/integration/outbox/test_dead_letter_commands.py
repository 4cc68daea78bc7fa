"""``cachesync dlq list|redrive`` on the database dead-letter store, without Kafka."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cachesync import BinlogPosition, DeleteKeys, IndexDoc, Op, RowChange
from cachesync.deadletters import PoisonChange
from cachesync.outbox import KIND_FAILED, STATE_DEAD, STATE_PENDING, OutboxStore
from cachesync.outbox.dead_letters import OutboxDeadLetterStore

ROOT = Path(__file__).resolve().parents[3]


def _env(**env: str) -> dict[str, str]:
    """This environment without its CACHESYNC_ settings, plus *env*."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CACHESYNC_")}
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), clean.get("PYTHONPATH")]))
    clean.update(env)
    return clean


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cachesync.cli", *args],
        env=_env(**env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_list_and_redrive_dead_rows_without_kafka(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'outbox.db'}"
    store = OutboxStore.from_url(url)
    store.create_table()
    pos = BinlogPosition("mysql-bin.000001", 10)
    store.add(
        KIND_FAILED,
        [IndexDoc("users", "7", {"x": 1}, pos)],
        last_error="PermanentError: 400 mapping",
        state=STATE_DEAD,
    )
    store.add(KIND_FAILED, [DeleteKeys(("user:8",), pos)])  # pending: not a dead letter
    change = RowChange(Op.INSERT, "app", "users", None, {"id": 9, "code": b"\xff"}, pos)
    OutboxDeadLetterStore(store).bury(
        [PoisonChange.of(change, "app.User", ["id"], ValueError("odd"))]
    )

    listed = _cli("dlq", "list", "--json", CACHESYNC_OUTBOX_URL=url)
    assert listed.returncode == 0, listed.stderr
    lines = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(line["reason"], line["key"]) for line in lines] == [
        ("permanent", "users/7"),
        ("poison", 'users {"id": 9}'),
    ]
    assert "400 mapping" in lines[0]["error"] and "ValueError: odd" in lines[1]["error"]
    assert "2 in the outbox table" in _cli("dlq", "list", CACHESYNC_OUTBOX_URL=url).stdout

    only_docs = _cli("dlq", "redrive", "--key", "users/*", CACHESYNC_OUTBOX_URL=url)
    assert only_docs.returncode == 0, only_docs.stderr
    assert "redrove 1 dead row(s)" in only_docs.stdout
    assert [r["kind"] for r in store.rows(STATE_PENDING)] == [KIND_FAILED, KIND_FAILED]
    assert (
        "redrove 0 dead row(s)"
        in _cli("dlq", "redrive", "--key", "users/*", CACHESYNC_OUTBOX_URL=url).stdout
    )
    # The poison change's table is declared by no imported model: it stays dead, said so.
    again = _cli("dlq", "redrive", CACHESYNC_OUTBOX_URL=url)
    assert "still poison 1" in again.stdout
    assert len(store.rows(STATE_DEAD)) == 1


def test_retry_without_kafka_retries_the_failures_parked_in_the_outbox(tmp_path: Path) -> None:
    """``cachesync retry`` with no ``kafka_bootstrap``: the outbox table is the retry queue."""
    import time

    import redis

    from tests.support.services import start_redis

    url = f"sqlite:///{tmp_path / 'outbox.db'}"
    store = OutboxStore.from_url(url)
    store.create_table()
    cache = start_redis(dir=tmp_path / "redis")
    client = redis.Redis.from_url(cache.url)
    client.set("user:8", "stale")
    store.add(KIND_FAILED, [DeleteKeys(("user:8",), BinlogPosition("mysql-bin.000001", 10))])
    log = tmp_path / "retry.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cachesync.cli", "retry", "--retry-policy", "fast"],
            env=_env(CACHESYNC_OUTBOX_URL=url, CACHESYNC_REDIS_URL=cache.url),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while client.exists("user:8") or store.rows(STATE_PENDING):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert "no kafka_bootstrap: retrying the failures parked in the outbox" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(30)
        client.close()
        cache.stop()
    assert proc.returncode == 0, log.read_text()
