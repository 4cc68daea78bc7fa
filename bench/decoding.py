"""The reading thread's own work, before and after the decoder change, in the same run.

py-spy on ``cachesync listen`` (bench/profile.py) showed the reading thread as
the catch-up's limit, and a fifth of it in the ``latin1`` decode
(``str.translate`` with a dict, per character). The decoder now uses a C-level
charmap table (src/cachesync/binlog/decoder.py). This scenario reads and plans
the same binlog range with :class:`~cachesync.binlog.source.BinlogSource` and
``plan()`` in this process twice: once with the previous decode put back
(``values.mysql_latin1``) and once as shipped.
"""

from __future__ import annotations

import time
from typing import Any

from bench import models
from bench.catchup import TX_ROWS, figure
from bench.common import Env, server_id
from cachesync.binlog import decoder
from cachesync.binlog.checkpoint import ResumePoint
from cachesync.binlog.source import BinlogSource
from cachesync.planning import plan
from cachesync.registry import Registry
from cachesync.values import mysql_latin1


def _read(env: Env, schema: str, start: tuple[str, int], rows: int) -> float:
    registry = Registry()
    spec = models.spec(schema, 0, False)
    registry.add(spec)
    source = BinlogSource(
        env.root, registry, server_id=server_id(), start=ResumePoint(*start),
        default_schema=schema,
    )  # fmt: skip
    seen = 0
    started = time.perf_counter()
    try:
        while seen < rows:
            batch = source.poll(1000, 5.0)
            if not batch:
                raise SystemExit(f"decoding: the stream ended after {seen} of {rows} rows")
            for change in batch:
                plan(change, spec)
            seen += len(batch)
    finally:
        source.close()
    return time.perf_counter() - started


def run(env: Env, quick: bool) -> list[dict[str, Any]]:
    rows = 30_000 if quick else 100_000
    schema = "bench_decoding"
    env.fresh_schema(schema, 1, rows)
    start = env.master_status()
    conn = env.connect()
    with conn.cursor() as cur:
        for first in range(0, rows, TX_ROWS):
            cur.execute(
                f"UPDATE {schema}.{models.table_name(0)} SET user_name = CONCAT('d-', id) "
                f"WHERE id >= {first} AND id < {first + TX_ROWS}"
            )
    conn.close()
    shipped = decoder._latin1
    timings: dict[str, list[float]] = {"before": [], "after": []}
    try:
        for _ in range(2):  # interleaved, so machine load hits both alike
            decoder._latin1 = mysql_latin1
            timings["before"].append(_read(env, schema, start, rows))
            decoder._latin1 = shipped
            timings["after"].append(_read(env, schema, start, rows))
    finally:
        decoder._latin1 = shipped
    env.drop(schema)
    before, after = rows / min(timings["before"]), rows / min(timings["after"])
    print(
        f"\nreading thread (BinlogSource + plan, in-process), {rows:,} rows: previous latin1 "
        f"decode {before:,.0f} rows/s, current {after:,.0f} rows/s ({after / before:.2f}x)"
    )
    return [
        figure("decode_latin1", "reading thread: BinlogSource + plan() (rows/s), current decoder",
               after, "rows/s", "the same with the previous latin1 decode", before)
    ]  # fmt: skip
