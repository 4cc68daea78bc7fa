"""``reindex`` rebuilds an index while the sidecar streams concurrent changes.

The concurrent test scans 20,000 rows by default in batches of 500 (40 scan
batches, each racing the churn); ``CACHESYNC_REINDEX_ROWS=100000`` with batches
of 2000 is the size it first ran at.
"""

from __future__ import annotations

import os
import random
import threading
import time

import pymysql
import pytest
from elasticsearch import Elasticsearch

from cachesync.binlog import reindex
from cachesync.sinks import SearchSink
from tests.integration.binlog.harness import BinlogEnv, running

pytestmark = pytest.mark.services

ROWS = int(os.environ.get("CACHESYNC_REINDEX_ROWS", "20000"))
#: 40 scan batches at 20,000 rows, 50 at 100,000: each one is a race with the churn.
BATCH = max(500, ROWS // 50)


def _load(env: BinlogEnv, rows: int) -> None:
    for first in range(1, rows + 1, 5000):
        env.sql(
            "INSERT INTO users VALUES "
            + ", ".join(
                f"({i}, 'u{i}', 'n{i}', 'u{i}@example.com', {1 if i % 10 == 0 else 0})"
                for i in range(first, min(first + 5000, rows + 1))
            )
        )


MAX_ROUNDS = 400


def _churn(env: BinlogEnv, stop: threading.Event, counts: dict[str, int]) -> None:
    """Updates, deletes, inserts, state flips and key changes all over the table."""
    rng = random.Random(5)
    next_id = ROWS + 1
    # Bounded: the churn must overlap the reindex, but what the sidecar then has to catch
    # up on must not grow with how slow the machine makes the reindex.
    while not stop.is_set() and counts["rounds"] < MAX_ROUNDS:
        ids = rng.sample(range(1, ROWS + 1), 40)
        listed = ", ".join(map(str, ids[:20]))
        env.sql(
            f"UPDATE users SET nickname = CONCAT('c', id, '-', {counts['rounds']}) WHERE id IN ({listed})"
        )
        env.sql(
            f"UPDATE users SET state = 1 - state WHERE id IN ({', '.join(map(str, ids[20:30]))})"
        )
        env.sql(f"DELETE FROM users WHERE id IN ({', '.join(map(str, ids[30:35]))})")
        env.sql(
            "INSERT INTO users VALUES "
            + ", ".join(f"({next_id + k}, 'new{next_id + k}', 'fresh', NULL, 0)" for k in range(5))
        )
        next_id += 5
        moved = ids[35]
        env.sql(f"UPDATE IGNORE users SET id = id + 1000000 WHERE id = {moved}")
        counts["rounds"] += 1
        time.sleep(0.01)


def test_reindex_concurrent_with_updates(binlog_env: BinlogEnv) -> None:
    env = binlog_env
    _load(env, ROWS)  # before the sidecar starts: only the reindex can index these
    sidecar = env.sidecar()
    with running(sidecar):
        stop = threading.Event()
        counts = {"rounds": 0}
        churn = threading.Thread(target=_churn, args=(env, stop, counts), daemon=True)
        churn.start()
        progress: list[tuple[int, int]] = []
        conn = pymysql.connect(**env.sidecar_params)  # SELECT + REPLICATION CLIENT suffice
        es = Elasticsearch(env.es_url, request_timeout=60)
        try:
            report = reindex(
                env.registry().tables()[0],
                connection=conn,
                search=SearchSink(es, chunk_size=BATCH),
                batch_size=BATCH,
                progress=lambda done, total: progress.append((done, total)),
            )
        finally:
            stop.set()
            churn.join(30)
            conn.close()
            es.close()
        assert counts["rounds"] >= 10, "the churn must overlap the reindex"
        env.sync_point(timeout=240)
        env.assert_index_matches_table()
    assert report.rows >= ROWS - 5 * counts["rounds"]
    assert report.documents >= 0.85 * ROWS
    assert progress[0][0] == 0 and progress[-1][0] == report.rows
    assert report.position.row == 0 and report.position.version > 0


def test_reindex_removes_orphans_and_keeps_newer_documents(binlog_env: BinlogEnv) -> None:
    env = binlog_env
    _load(env, 50)
    sink = SearchSink(env.es)
    from cachesync.actions import IndexDoc
    from cachesync.binlog.positions import current_position
    from cachesync.changes import BinlogPosition, GtidPosition

    file, _pos = env.master_status()
    conn = pymysql.connect(**env.root)
    try:
        now = current_position(conn)  # MariaDB: a GTID position
    finally:
        conn.close()
    assert isinstance(now, GtidPosition)
    future = GtidPosition("", now.weight + 1000)  # a change "after" the reindex position
    sink.apply(
        [
            # Written before the upgrade to GTID versions: smaller than any of them.
            IndexDoc(env.index, "9999", {"username": "ghost"}, BinlogPosition(file, 4, 0)),
            IndexDoc(env.index, "3", {"username": "newer"}, future),
        ]
    )
    conn = pymysql.connect(**env.root)
    try:
        report = reindex(env.registry().tables()[0], connection=conn, search=sink, batch_size=7)
    finally:
        conn.close()
    docs = env.documents()
    assert "9999" not in docs and report.orphans == 1
    assert docs["3"] == {"username": "newer"}, "a document with a newer version must win"
    del docs["3"]
    expected = env.expected_documents()
    del expected["3"]
    assert docs == expected
