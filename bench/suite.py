"""The benchmark suite: every figure beside its baseline of the same run, ratios first.

``scripts/bench [--quick] [--only NAME ...] [--outage-seconds S]`` (or ``python -m bench``).
Scenarios, each a module of this package:

* ``catchup``: ``cachesync listen`` (a process, database checkpoint, default
  settings) catching up a backlog of 1000-row transactions vs the raw library
  read; with a projection vs ``helpers.bulk`` alone; with 90% of the binlog
  from unwatched tables; with 1, 10 and 100 watched tables; a py-spy profile
  of the keys-only catch-up (``--no-profile`` to skip);
* ``decoding``: the reading thread (BinlogSource + plan) with the previous and
  the current latin1 decode, in the same run;
* ``latency``: commit -> key gone at 200 and 1,000 tx/s, per batch preset;
* ``search``: SearchSink vs one index call per document;
* ``bigtxn``: RSS of the sidecar while one 100k / 1M-row transaction streams;
* ``recovery``: a Redis outage at 500 tx/s, seconds from its return to every key consistent;
* ``retries``: RSS of ``cachesync listen`` and ``cachesync retry`` with 1,000 and
  100,000 pending retries (Redis down) and the time to drain them; recovery
  with Redis down AND the Kafka broker frozen (the outbox fallback);
* ``reads`` / ``writepath``: bench/reads.py and bench/writepath.py, when present.

Writes bench/results/latest.json, bench/results/*.png and the results section
of bench/README.md. Not a test: nothing here asserts a number.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SCENARIOS = (
    "catchup", "decoding", "latency", "search", "bigtxn", "recovery", "retries", "reads",
    "writepath",
)  # fmt: skip


def _imported(name: str, quick: bool) -> str | None:
    """Run bench/<name>.py's ``main()`` in this process (guarded: absent is fine) and
    return what it printed."""
    try:
        module = importlib.import_module(f"bench.{name}")
    except ImportError as exc:
        print(f"\nbench/{name}.py not importable ({exc}); skipped")
        return None
    argv = {"reads": ["--reads", "1000", "--commits", "100"]}.get(name, []) if quick else []
    out = io.StringIO()
    saved = sys.argv
    sys.argv = [f"bench/{name}.py", *argv]
    print(f"\nbench/{name}.py:", flush=True)
    try:
        with contextlib.redirect_stdout(out):
            module.main()
    except SystemExit:
        pass
    finally:
        sys.argv = saved
    print(out.getvalue(), flush=True)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small workloads: a few minutes")
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, help="run only these scenarios")
    parser.add_argument("--outage-seconds", type=float, default=None,
                        help="length of the Redis outage (default 30, --quick 8)")  # fmt: skip
    parser.add_argument("--no-profile", action="store_true", help="no py-spy profile")
    args = parser.parse_args(argv)
    from bench import bigtxn, catchup, decoding, latency, profile, recovery, report, retries, search
    from bench.common import Env

    env = Env()
    chosen = set(args.only or SCENARIOS)
    results: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": report.machine(),
        "figures": [],
    }
    started = time.monotonic()
    if "catchup" in chosen:
        profiler = None if args.no_profile else profile.Profiler
        results["figures"] += catchup.run(env, args.quick, profile=profiler)
        if profiler is not None:
            summary = profile.summary(profile.LOGS / "py-spy-listen.txt")
            results["profile"] = summary
            text = io.StringIO()
            with contextlib.redirect_stdout(text):
                profile.show(summary)
            results["profile_text"] = text.getvalue()
            print(text.getvalue())
    if "decoding" in chosen:
        results["figures"] += decoding.run(env, args.quick)
    if "latency" in chosen:
        results["latency"] = latency.run(env, args.quick)
    if "search" in chosen:
        results["figures"] += search.run(env, args.quick)
    if "bigtxn" in chosen:
        results["big_transactions"] = bigtxn.run(env, args.quick)
    if "recovery" in chosen:
        seconds = (
            args.outage_seconds if args.outage_seconds is not None else (8 if args.quick else 30)
        )
        results["recovery"] = recovery.run(env, seconds)
    if "retries" in chosen:
        seconds = (
            args.outage_seconds if args.outage_seconds is not None else (8 if args.quick else 30)
        )
        results["retries"] = retries.run(env, args.quick, seconds)
    for name in ("reads", "writepath"):
        if name in chosen:
            results[name] = _imported(name, args.quick)
    results["seconds"] = time.monotonic() - started
    results["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    for path in report.write(results):
        print(f"wrote {path.relative_to(ROOT)}")
    print("\n" + report.table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
