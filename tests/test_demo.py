"""The README's first command, end to end, on the embedded (Kafka-less) default.

scripts/demo must finish with zero stale keys, zero stale documents besides the one it makes
unindexable on purpose, and exactly that one dead letter, listed by ``cachesync_dlq list``
from the outbox table.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_to_completion_on_the_outbox_retry_path(services: dict[str, str]) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CACHESYNC_DEMO_KAFKA"}
    started = time.monotonic()
    done = subprocess.run(
        [str(ROOT / "scripts" / "demo")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
    )
    elapsed = time.monotonic() - started
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "retry path: the outbox table cachesync_outbox" in out, out[-4000:]
    assert "Kafka topic" not in out, out[-4000:]
    assert "stale keys now         0" in out, out[-4000:]
    assert "stale documents now    0" in out, out[-4000:]
    assert "deleted right after COMMIT: True" in out
    assert "the 3 turned into drafts are gone: True" in out
    assert "stream flowing" in out
    # The Redis outage's deletes were parked in the outbox table and relayed from it.
    parked = re.search(r"parked in the outbox\s+(\d+) row\(s\): (\d+) relayed, (\d+) pending", out)
    assert parked, out[-4000:]
    assert int(parked[2]) >= 1 and int(parked[3]) == 0, parked[0]
    # Exactly the one refused document, with Elasticsearch's reason, listed by cachesync_dlq.
    letter = re.search(r"dead letters\s+1 \(expected 1: blog-articles/(\d+)\)", out)
    assert letter, out[-4000:]
    listed = re.search(rf"    blog-articles/{letter[1]}  \w+  attempts=\d+  \[outbox:\d+\]", out)
    assert listed, out[-4000:]
    assert "out of range for a short" in out[listed.end() :], out[-4000:]
    assert "stopped cleanly" in out
    assert elapsed < 180, f"the demo took {elapsed:.0f}s"
