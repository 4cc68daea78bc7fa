"""py-spy on the deployed ``cachesync listen`` while it catches up (issue 14, item 2).

:class:`Profiler` attaches ``py-spy record`` (collapsed stacks, per thread) to
the sidecar process when the catch-up starts and stops it when the catch-up is
done; :func:`summary` turns the stacks into the functions that hold each
thread (self time at the leaf, and inclusive time), which is what
bench/README.md quotes.
"""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import LOGS


class Profiler:
    def __init__(self, pid: int, name: str = "listen") -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        self.output = LOGS / f"py-spy-{name}.txt"
        spy = Path(sys.executable).with_name("py-spy")
        self.proc = subprocess.Popen(
            [str(spy), "record", "--pid", str(pid), "--rate", "200", "--format", "raw",
             "--threads", "--output", str(self.output), "--nonblocking"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(0.3)  # attached before the catch-up starts

    def finish(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def summary(path: Path, top: int = 12) -> dict[str, Any]:
    """Per thread: samples, and the functions with the most self and inclusive samples."""
    threads: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    inclusive: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    totals: collections.Counter[str] = collections.Counter()
    if not path.exists():
        return {}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0]  # py-spy --threads: 'thread (TID): NAME'
        names = [_short(f) for f in frames[1:]]
        n = int(count)
        totals[thread] += n
        if names:
            threads[thread][names[-1]] += n
        for name in set(names):
            inclusive[thread][name] += n
    out = {}
    for thread, n in totals.most_common():
        out[thread] = {
            "samples": n,
            "self": [(f, round(c / n, 3)) for f, c in threads[thread].most_common(top)],
            "inclusive": [(f, round(c / n, 3)) for f, c in inclusive[thread].most_common(top)],
        }
    return out


def _short(frame: str) -> str:
    # "function (path/to/module.py:123)" -> "function (module.py)"
    name, _, where = frame.partition(" (")
    module = where.rsplit("/", 1)[-1].split(":", 1)[0]
    return f"{name} ({module})"


def show(report: dict[str, Any], lines: int = 8) -> None:
    for thread, data in report.items():
        if data["samples"] < 20:
            continue
        print(f"  {thread}: {data['samples']} samples")
        for func, share in data["self"][:lines]:
            print(f"    self {share:6.1%}  {func}")
