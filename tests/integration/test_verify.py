"""verify_index on the private MariaDB and ES-API server: finds and repairs every kind of drift."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest

from cachesync import BinlogPosition, IndexDoc, Projection, Settings, Sync, resolve
from cachesync.connections import elasticsearch_client, mysql_params
from cachesync.sinks import SearchSink
from cachesync.verify import verify_index


@pytest.fixture
def conn(mysql_url: str) -> Iterator[Any]:
    connection = pymysql.connect(**mysql_params(mysql_url), autocommit=True)
    yield connection
    connection.close()


def test_verify_reports_and_repairs_missing_stale_and_orphans(conn: Any, es_url: str) -> None:
    table = f"verify_{uuid.uuid4().hex[:8]}"
    index = f"verify-{uuid.uuid4().hex[:8]}"
    with conn.cursor() as c:
        c.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, title_text VARCHAR(50), state INT)")
        c.executemany(
            f"INSERT INTO {table} VALUES (%s, %s, %s)",
            [(i, f"t{i}", 0 if i != 4 else 1) for i in range(1, 6)],
        )
    spec = resolve(
        "Post",
        Sync(search=Projection(index=index, fields=["title"], when=lambda r: r["state"] == 0)),
        table=table,
        columns={"id": "id", "title": "title_text", "state": "state"},
        primary_key=["id"],
    )
    es = elasticsearch_client(Settings(es_url=es_url))
    old = BinlogPosition("mysql-bin.000001", 100)
    SearchSink(es).apply(
        [
            IndexDoc(index, "1", {"title": "t1"}, old),  # correct
            IndexDoc(index, "2", {"title": "OLD"}, old),  # stale
            IndexDoc(index, "4", {"title": "t4"}, old),  # orphan: row 4 no longer meets `when`
            IndexDoc(index, "9", {"title": "t9"}, old),  # orphan: no row 9
        ]
    )  # 3 and 5 are missing
    try:
        report = verify_index(conn, es, spec, spec.projections[0])
        assert (report.missing, report.stale, report.orphans) == (["3", "5"], ["2"], ["4", "9"])
        assert not report.ok and "2 missing, 1 stale, 2 orphans" in report.summary()
        repaired = verify_index(
            conn, es, spec, spec.projections[0], repair_at=BinlogPosition("mysql-bin.000001", 200)
        )
        assert repaired.repaired == 5
        assert verify_index(conn, es, spec, spec.projections[0]).ok
        sampled = verify_index(conn, es, spec, spec.projections[0], sample=3)
        assert sampled.ok and sampled.rows == 3
    finally:
        es.indices.delete(index=index, ignore_unavailable=True)
        with conn.cursor() as c:
            c.execute(f"DROP TABLE {table}")
