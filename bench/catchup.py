"""Catch-up throughput of ``cachesync listen`` (a process) vs the raw library read.

The sidecar streams, is paused (SIGSTOP) while a backlog of 1000-row UPDATE
transactions is written, then resumed (SIGCONT): the time from SIGCONT until
the last transaction's effects are visible (its key gone from Redis, its
document in Elasticsearch; lanes apply in binlog order, so all before it is
applied too) is the catch-up time. The baseline is python-mysql-replication's
stock ``BinLogStreamReader`` decoding the same binlog range (same tables
filter), measured in the same run; with a projection, also
``elasticsearch.helpers.bulk`` alone indexing the same documents.
"""

from __future__ import annotations

import time
from typing import Any

from bench import models
from bench.common import ROOT, Env, Listen, raw_read, sync_point, wait_for

TX_ROWS = 1000


def _naive_keys(schema: str, table: str, row: dict[str, Any]) -> list[str]:
    """The keys bench/models.py declares for a row as the library decodes it (by id and by
    name, of the before and the after image), rendered by hand as a hand-written consumer does."""
    i = int(table.rsplit("_", 1)[1])
    keys: dict[str, None] = {}
    for image in (row.get("before_values"), row.get("after_values", row.get("values"))):
        if image:
            keys[models.key_by_id(schema, i, image["id"])] = None
            keys[models.key_by_id(schema, i, f"by-name:{image['user_name']}")] = None
    return list(keys)


def figure(
    fid: str, title: str, value: float, unit: str, baseline: str, base: float, **extra: Any
) -> dict[str, Any]:
    """One result beside its baseline of the same run; ``ratio`` = value / baseline."""
    return {
        "id": fid,
        "title": title,
        "value": round(value, 2),
        "unit": unit,
        "baseline": baseline,
        "baseline_value": round(base, 2),
        "ratio": round(value / base, 3) if base else None,
        **extra,
    }


def _backlog(
    env: Env, schema: str, tables: int, rows_per_table: int, unwatched_share: int = 0
) -> tuple[int, int]:
    """Write the backlog: 1000-row renaming UPDATEs, round-robin over the tables; with
    *unwatched_share* = k, k transactions of the unwatched table ``other`` per watched
    one. Returns (watched rows, all rows)."""
    conn = env.connect()
    watched = total = 0
    with conn.cursor() as cur:
        for first in range(0, rows_per_table, TX_ROWS):
            for t in range(tables):
                cur.execute(
                    f"UPDATE {schema}.{models.table_name(t)} SET user_name = "
                    f"CONCAT('r{first}-', id) WHERE id >= {first} AND id < {first + TX_ROWS}"
                )
                watched += cur.rowcount
                total += cur.rowcount
                for _ in range(unwatched_share):
                    cur.execute(
                        f"UPDATE {schema}.other SET user_name = CONCAT(user_name, '+') "
                        f"WHERE id >= {first} AND id < {first + TX_ROWS}"
                    )
                    total += cur.rowcount
    conn.close()
    return watched, total


def catch_up(
    env: Env,
    name: str,
    *,
    rows: int,
    tables: int = 1,
    projection: bool = False,
    unwatched_share: int = 0,
    profile: Any = None,
    naive: bool = False,
    batch: str | None = None,
) -> dict[str, Any]:
    """One catch-up run; returns rates (rows/s) of the sidecar and the raw read (*naive*:
    also of the naive per-key loop over the same range). *batch*: a batch preset for the
    sidecar (``CACHESYNC_BATCH``); None runs the default (adaptive)."""
    schema = f"bench_{name}"
    per_table = max(TX_ROWS, rows // tables)
    env.fresh_schema(schema, tables, per_table)
    if unwatched_share:
        env.sql(models.DDL.format(table=f"{schema}.other"))
        env.insert(f"{schema}.other", per_table)
    es = env.es() if projection else None
    if es is not None:
        for t in range(tables):
            es.options(ignore_status=404).indices.delete(index=models.index_name(schema, t))
    listen = Listen(env, schema, tables=tables, projection=projection, batch=batch)
    with listen:
        listen.wait_streaming()
        sync_point(env, schema)
        listen.pause()
        start = env.master_status()
        watched, total = _backlog(env, schema, tables, per_table, unwatched_share)
        end = env.master_status()
        # The last transaction is the last watched table's last 1000 rows.
        last_table, last_id = tables - 1, per_table - 1
        last_key = models.key_by_id(schema, last_table, last_id)
        env.redis.set(last_key, "stale")
        last_index = models.index_name(schema, last_table)
        # The baseline runs on both sides of the catch-up (the sidecar paused before,
        # idle after) and counts as their mean: on a shared machine the load moves
        # within a minute, and a baseline taken at one moment only measures that moment.
        bulk_before = bulk_baseline(env, schema, per_table) if es is not None else None
        profiler = profile(listen.pid) if profile is not None else None
        cpu = _CpuMeter(listen.pid, es is not None)
        started = time.perf_counter()
        listen.resume()

        def done() -> bool:
            if env.redis.exists(last_key):
                return False
            if es is None:
                return True
            doc = es.options(ignore_status=404).get(index=last_index, id=str(last_id))
            return bool(doc.get("found")) and str(doc["_source"]["username"]).startswith("r")

        wait_for(done, 600, f"{name}: the sidecar to catch up", poll=0.002 if es is None else 0.01)
        elapsed = time.perf_counter() - started
        cpu_seconds = cpu.seconds()
        if profiler is not None:
            profiler.finish()
        bulk_after = bulk_baseline(env, schema, per_table) if es is not None else None
    raw_rows, raw_seconds = raw_read(
        env, schema, [models.table_name(t) for t in range(tables)], start, end
    )
    if raw_rows != watched:
        raise SystemExit(f"{name}: the raw read saw {raw_rows} rows, {watched} were written")
    naive_seconds = None
    if naive:
        naive_rows, naive_seconds = raw_read(
            env, schema, [models.table_name(t) for t in range(tables)], start, end,
            per_key=lambda table, row: _naive_keys(schema, table, row),
        )  # fmt: skip
        if naive_rows != watched:
            raise SystemExit(f"{name}: the naive loop saw {naive_rows} rows of {watched}")
    result = {
        "rows": total,
        "watched_rows": watched,
        "sidecar_seconds": elapsed,
        "sidecar_rows_per_s": total / elapsed,
        "raw_seconds": raw_seconds,
        "raw_rows_per_s": total / raw_seconds,
        "cpu_seconds": cpu_seconds,
    }
    if naive_seconds is not None:
        result.update(naive_seconds=naive_seconds, naive_rows_per_s=total / naive_seconds)
    if bulk_before is not None and bulk_after is not None:
        rates = (bulk_before["bulk_docs_per_s"], bulk_after["bulk_docs_per_s"])
        result.update(
            bulk_docs_per_s=sum(rates) / 2,
            bulk_docs_per_s_before=rates[0],
            bulk_docs_per_s_after=rates[1],
        )
    env.drop(schema)
    return result


class _CpuMeter:
    """CPU seconds (user + system) used from now on by the sidecar, each of its threads,
    and the Elasticsearch-API server: where a catch-up's time goes on two shared cores."""

    def __init__(self, pid: int, search: bool) -> None:
        import psutil

        self._procs = {"sidecar": psutil.Process(pid)}
        es_pid = ROOT / ".services" / "es.pid"
        if search and es_pid.exists():
            self._procs["search server"] = psutil.Process(int(es_pid.read_text()))
        self._start = self._sample()

    def _sample(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, proc in self._procs.items():
            times = proc.cpu_times()
            out[name] = times.user + times.system
            if name == "sidecar":
                for thread in proc.threads():
                    out[f"sidecar thread {thread.id}"] = thread.user_time + thread.system_time
        return out

    def seconds(self) -> dict[str, float]:
        end = self._sample()
        return {
            k: round(v - self._start.get(k, 0.0), 3)
            for k, v in end.items()
            if v - self._start.get(k, 0.0) > 0.01
        }


def bulk_baseline(env: Env, schema: str, rows: int) -> dict[str, float]:
    """``helpers.bulk`` alone, with its defaults (500 actions per request), indexing the
    documents the sidecar wrote (same ids, same bodies, read back from the table, and
    external versions as long as the sidecar's GTID-based ones) into a fresh index of the
    same server, created before the clock starts as the sidecar's was: the rate to match."""
    from elasticsearch import helpers

    es = env.es()
    index = f"{schema.lower()}-bulk-baseline"
    es.options(ignore_status=404).indices.delete(index=index)
    es.indices.create(index=index)
    table = f"{schema}.{models.table_name(0)}"
    found = env.sql(f"SELECT id, user_name, nickname, email FROM {table} ORDER BY id LIMIT {rows}")
    docs = [
        {
            "_op_type": "index",
            "_index": index,
            "_id": str(row_id),
            "version": (1 << 62) + n + 1,
            "version_type": "external",
            "_source": {"username": username, "nickname": nickname, "email": email},
        }
        for n, (row_id, username, nickname, email) in enumerate(found)
    ]
    started = time.perf_counter()
    indexed, errors = helpers.bulk(es, docs)
    seconds = time.perf_counter() - started
    if indexed != len(docs) or errors:
        raise SystemExit(f"helpers.bulk baseline: {indexed} of {len(docs)} indexed, {errors}")
    es.options(ignore_status=404).indices.delete(index=index)
    return {"bulk_seconds": seconds, "bulk_docs_per_s": len(docs) / seconds}


def run(env: Env, quick: bool, profile: Any = None) -> list[dict[str, Any]]:
    """Every throughput figure: keys only (also against the throughput preset), with a
    projection, 90% unwatched, 1/10/100 tables."""
    rows = 30_000 if quick else 100_000
    figures = []
    print(f"\ncatch-up of a backlog of 1000-row transactions ({rows:,} rows), cachesync listen:")
    keys = catch_up(env, "keys", rows=rows, profile=profile, naive=True)
    _say("keys only", keys)
    figures.append(
        figure("catchup_keys", "catch-up, keys only (rows/s)", keys["sidecar_rows_per_s"],
               "rows/s", "raw library read", keys["raw_rows_per_s"], goal=1.5)
    )  # fmt: skip
    figures.append(
        figure("catchup_keys_naive", "catch-up, keys only, vs a naive per-key loop (rows/s)",
               keys["sidecar_rows_per_s"], "rows/s",
               "raw library read + one DELETE per key", keys["naive_rows_per_s"])
    )  # fmt: skip
    # Issue 14, item 1: the adaptive default must keep the 1000-row throughput of the
    # `throughput` preset (a fixed 50 ms window, the old way to get big batches).
    preset = catch_up(env, "keys_tp", rows=rows, batch="throughput")
    _say("keys only, --batch throughput", preset)
    figures.append(
        figure("catchup_keys_vs_throughput_preset",
               "catch-up, keys only: default (adaptive) vs the throughput preset (rows/s)",
               keys["sidecar_rows_per_s"], "rows/s", "the same with --batch throughput",
               preset["sidecar_rows_per_s"], goal=1.0)
    )  # fmt: skip
    proj = catch_up(env, "proj", rows=rows // 2, projection=True)
    _say("with a projection", proj)
    figures.append(
        figure("catchup_projection", "catch-up with a projection (rows/s)",
               proj["sidecar_rows_per_s"], "rows/s", "helpers.bulk alone (docs/s)",
               proj["bulk_docs_per_s"], goal=0.9)
    )  # fmt: skip
    figures.append(
        figure("catchup_projection_vs_raw", "catch-up with a projection vs raw read",
               proj["sidecar_rows_per_s"], "rows/s", "raw library read", proj["raw_rows_per_s"])
    )  # fmt: skip
    unw = catch_up(env, "unwatched", rows=rows // 10 if quick else rows // 5, unwatched_share=9)
    _say("90% of the binlog unwatched", unw)
    figures.append(
        figure("catchup_unwatched", "catch-up, 90% of the binlog from unwatched tables "
               "(binlog rows/s)", unw["sidecar_rows_per_s"], "rows/s", "raw library read",
               unw["raw_rows_per_s"])
    )  # fmt: skip
    for n in (1, 10, 100):
        res = catch_up(env, f"tables{n}", rows=max(rows, n * TX_ROWS), tables=n)
        _say(f"{n} watched table(s)", res)
        figures.append(
            figure(f"catchup_tables_{n}", f"catch-up, {n} watched table(s) (rows/s)",
                   res["sidecar_rows_per_s"], "rows/s", "raw library read",
                   res["raw_rows_per_s"])
        )  # fmt: skip
    return figures


def _say(label: str, r: dict[str, Any]) -> None:
    extra = (
        f", helpers.bulk {r['bulk_docs_per_s']:,.0f} docs/s (before {r['bulk_docs_per_s_before']:,.0f},"
        f" after {r['bulk_docs_per_s_after']:,.0f})"
        if "bulk_docs_per_s" in r
        else ""
    )
    print(
        f"  {label:32} sidecar {r['sidecar_rows_per_s']:9,.0f} rows/s ({r['sidecar_seconds']:.2f}s)"
        f"  raw read {r['raw_rows_per_s']:9,.0f} rows/s  ratio {r['sidecar_rows_per_s'] / r['raw_rows_per_s']:.2f}"
        f"{extra}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.catchup [--rows N] [--repeat N] [--profile]``: only the catch-up with a
    projection, several times (the spread is the point on a shared machine)."""
    import argparse

    from bench import profile as spy
    from bench.common import LOGS, Env

    parser = argparse.ArgumentParser(prog="python -m bench.catchup")
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="py-spy record the sidecar")
    args = parser.parse_args(argv)
    env = Env()
    ratios = []
    for run_no in range(args.repeat):
        profiler = (lambda pid: spy.Profiler(pid, "projection")) if args.profile else None
        res = catch_up(env, "proj", rows=args.rows, projection=True, profile=profiler)
        _say(f"with a projection, run {run_no + 1}", res)
        ratios.append(res["sidecar_rows_per_s"] / res["bulk_docs_per_s"])
        print(f"    vs helpers.bulk: {ratios[-1]:.2f}x; CPU s: {res['cpu_seconds']}", flush=True)
        if profiler is not None:
            spy.show(spy.summary(LOGS / "py-spy-projection.txt"), lines=12)
    print(f"ratios vs helpers.bulk: {', '.join(f'{r:.2f}' for r in ratios)}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
