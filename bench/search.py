"""Elasticsearch documents/s: :class:`~cachesync.sinks.SearchSink` (one bulk request per
1000 documents, external versions) vs one ``index`` call per document, as a
hand-written handler does; both on the same server in the same run."""

from __future__ import annotations

import time
from typing import Any

from bench.catchup import figure
from bench.common import Env
from cachesync.actions import IndexDoc
from cachesync.changes import BinlogPosition
from cachesync.sinks import SearchSink


def _doc(i: int) -> dict[str, Any]:
    return {"username": f"user-{i}", "nickname": f"nick-{i}", "email": f"u{i}@example.com"}


def run(env: Env, quick: bool) -> list[dict[str, Any]]:
    es = env.es()
    docs = 5_000 if quick else 20_000
    single = 500 if quick else 2_000
    print(f"\nElasticsearch documents/s ({docs:,} through SearchSink, {single:,} one by one):")
    index = "bench-search-sink"
    es.options(ignore_status=404).indices.delete(index=index)
    actions = [
        IndexDoc(index, str(i), _doc(i), BinlogPosition("mysql-bin.000001", 4 + i))
        for i in range(docs)
    ]
    sink = SearchSink(es)
    started = time.perf_counter()
    for first in range(0, docs, 1000):
        failures = sink.apply(actions[first : first + 1000])
        if failures:
            raise SystemExit(f"SearchSink: {len(failures)} failures, first {failures[0]}")
    sink_rate = docs / (time.perf_counter() - started)
    es.options(ignore_status=404).indices.delete(index=index)
    started = time.perf_counter()
    for i in range(single):
        es.index(index=index, id=str(i), document=_doc(i), version=i + 1, version_type="external")
    one_rate = single / (time.perf_counter() - started)
    es.options(ignore_status=404).indices.delete(index=index)
    print(
        f"  SearchSink {sink_rate:9,.0f} docs/s   one index call per document {one_rate:9,.0f} docs/s"
    )
    return [
        figure("search_sink", "Elasticsearch docs/s through SearchSink", sink_rate, "docs/s",
               "one index call per document", one_rate)
    ]  # fmt: skip
