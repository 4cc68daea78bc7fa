"""Benchmark: what a TRUNCATE/DROP/RENAME of a watched table costs (binlog/tablepurge.py).

Run from the repository root (the private services are started if needed)::

    .venv/bin/python bench/purge.py [--keyspace 200000] [--matching 20000] [--documents 20000]

Prints, for ``RedisSink.purge``: the time to walk a keyspace of ``--keyspace`` keys
(``SCAN`` is O(keyspace)) when ``--matching`` of them match and when none does;
for ``SearchSink.purge``: the time to delete ``--documents`` documents (a scroll of
the index plus versioned bulk deletes).
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from tests.support import services  # noqa: E402

from cachesync import BinlogPosition, IndexDoc, Settings  # noqa: E402
from cachesync.connections import elasticsearch_client, redis_client  # noqa: E402
from cachesync.sinks import RedisSink, SearchSink  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keyspace", type=int, default=200_000)
    parser.add_argument("--matching", type=int, default=20_000)
    parser.add_argument("--documents", type=int, default=20_000)
    args = parser.parse_args()
    urls = services.start_all()
    run = uuid.uuid4().hex[:8]

    r = redis_client(Settings(redis_url=urls["CACHESYNC_REDIS_URL"]))
    sink = RedisSink(r)
    other = args.keyspace - args.matching
    for prefix, count in ((f"bench:{run}:hit", args.matching), (f"bench:{run}:miss", other)):
        for start in range(0, count, 10_000):
            pipe = r.pipeline(transaction=False)
            for i in range(start, min(count, start + 10_000)):
                pipe.set(f"{prefix}:{i}", b"1")
            pipe.execute()
    size = r.dbsize()
    started = time.perf_counter()
    none = sink.purge(f"bench:{run}:nothing:*")
    idle = time.perf_counter() - started
    started = time.perf_counter()
    deleted = sink.purge(f"bench:{run}:hit:*")
    busy = time.perf_counter() - started
    print(
        f"RedisSink.purge over {size:,} keys: no match {idle:.2f}s ({size / idle:,.0f} keys "
        f"scanned/s, {none} deleted); {deleted:,} matching {busy:.2f}s"
    )
    sink.purge(f"bench:{run}:*")

    es = elasticsearch_client(Settings(es_url=urls["CACHESYNC_ES_URL"]))
    search = SearchSink(es)
    index = f"bench-purge-{run}"
    docs = [
        IndexDoc(index, str(i), {"name": f"n{i}"}, BinlogPosition("mysql-bin.000001", 100 + i))
        for i in range(args.documents)
    ]
    for start in range(0, len(docs), 5000):
        assert search.apply(docs[start : start + 5000]) == []
    started = time.perf_counter()
    gone = search.purge(index, BinlogPosition("mysql-bin.000002", 4))
    took = time.perf_counter() - started
    print(f"SearchSink.purge: {gone:,} documents in {took:.2f}s ({gone / took:,.0f}/s)")
    es.indices.delete(index=index)


if __name__ == "__main__":
    main()
