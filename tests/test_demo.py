"""The README's first command, end to end: scripts/demo must finish with zero stale keys."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_to_completion_with_zero_stale_keys(services: dict[str, str]) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [str(ROOT / "scripts" / "demo")], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    elapsed = time.monotonic() - started
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "stale keys now         0" in out, out[-4000:]
    assert "dead letters           0" in out
    assert "deleted right after COMMIT: True" in out
    assert "the 3 turned into drafts are gone: True" in out
    assert "stopped cleanly" in out
    assert elapsed < 180, f"the demo took {elapsed:.0f}s"
