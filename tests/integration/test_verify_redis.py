"""verify on the private MariaDB, Redis and ES-API server: keys, honest repairs, the nines.

* ``verify_keys``: a cached value that differs from the loader's is stale; a key
  whose row is gone, or whose row renders another key now, is an orphan; a lease
  marker (a fill in flight) and another model's keys are neither; ``repair``
  deletes exactly those and counts what Redis actually removed.
* ``verify_index`` with a document whose external version is AHEAD of the
  table's position: the repair writes it just above its own version, and the
  next verify finds it consistent (it used to print "1 repaired" and stay stale).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest
import redis as redis_lib

from cachesync import BinlogPosition, IndexDoc, Projection, Settings, Sync, resolve
from cachesync.binlog import server
from cachesync.connections import elasticsearch_client, mysql_params
from cachesync.sinks import SearchSink
from cachesync.verify import consistency, verify_index, verify_keys

pytestmark = pytest.mark.services


@pytest.fixture
def conn(mysql_url: str) -> Iterator[Any]:
    connection = pymysql.connect(**mysql_params(mysql_url), autocommit=True)
    yield connection
    connection.close()


@pytest.fixture
def cache(redis_url: str) -> Iterator[redis_lib.Redis]:
    client = redis_lib.Redis.from_url(redis_url)
    yield client
    client.close()


def test_consistency_shows_the_nines_rounded_down() -> None:
    assert consistency(1000, 1000) == "1000 of 1000 consistent (100%)"
    assert consistency(999, 1000) == "999 of 1000 consistent (99.9%)"
    assert consistency(99_999, 100_000) == "99999 of 100000 consistent (99.999%)"
    assert consistency(9_999_999, 10_000_000).endswith("(99.99999%)")
    assert consistency(2, 3) == "2 of 3 consistent (66.6%)"
    assert consistency(0, 4) == "0 of 4 consistent (0.0%)"
    assert "nothing to compare" in consistency(0, 0)


def test_verify_keys_finds_stale_and_orphan_keys_and_repairs_exactly_them(
    conn: Any, cache: redis_lib.Redis
) -> None:
    run = uuid.uuid4().hex[:8]
    table = f"verify_keys_{run}"
    prefix = f"vk:{run}"
    with conn.cursor() as c:
        c.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, user_name VARCHAR(50))")
        c.executemany(f"INSERT INTO {table} VALUES (%s, %s)", [(i, f"u{i}") for i in range(1, 6)])
    spec = resolve(
        "Member",
        Sync(keys=[f"{prefix}:user:{{id}}", f"{prefix}:by-name:{{username}}"]),
        table=table,
        columns={"id": "id", "username": "user_name"},
        primary_key=["id"],
    )
    other = resolve(  # another model whose keys share the prefix
        "Team",
        Sync(keys=[f"{prefix}:by-name:team-{{id}}"]),
        table=table,
        columns={"id": "id"},
        primary_key=["id"],
    )

    def loader(template: Any, row: Any) -> bytes:
        return json.dumps({"id": row["id"], "username": row["username"]}).encode()

    rows = {i: {"id": i, "username": f"u{i}"} for i in range(1, 6)}
    cache.set(f"{prefix}:user:1", loader(None, rows[1]))
    cache.set(f"{prefix}:user:2", json.dumps({"id": 2, "username": "OLD"}))  # stale
    cache.set(f"{prefix}:by-name:u3", loader(None, rows[3]))
    cache.set(f"{prefix}:by-name:ann", "x")  # row 4 was 'ann' once: renamed, an orphan
    cache.set(f"{prefix}:user:99", "x")  # row 99 is gone: an orphan
    cache.set(f"{prefix}:user:98", b"\x00cachesync-lease:abc")  # a fill in flight
    cache.set(f"{prefix}:user:list", "x")  # not an integer id: not this template's key
    cache.set(f"{prefix}:by-name:team-7", "x")  # the other model's key
    try:
        report = verify_keys(conn, cache, spec, loader=loader, others=[spec, other])
        assert (report.rows, report.keys, report.cached) == (5, 10, 3)
        assert report.stale == [f"{prefix}:user:2"]
        assert report.orphans == [f"{prefix}:by-name:ann", f"{prefix}:user:99"]
        assert report.compared and not report.ok
        assert (report.checked, report.drift) == (5, 3)
        assert "3 cached, 1 stale, 2 orphans; values compared" in report.summary()

        blind = verify_keys(conn, cache, spec)  # no loader: values are not compared
        assert blind.stale == [] and not blind.compared
        assert "values not compared (no loader)" in blind.summary()
        # A sample: up to 3 orphan candidates per template (here: all of them) are parsed
        # back into their fields and looked up; the cached keys of live rows are not orphans.
        sampled = verify_keys(conn, cache, spec, loader=loader, sample=3, others=[other])
        assert sampled.rows == 3 and sampled.unsearched == []
        assert sampled.orphans == [f"{prefix}:by-name:ann", f"{prefix}:user:99"]

        cache.delete(f"{prefix}:user:99")  # gone before this verify: not reported

        def invalidated(template: Any, row: Any) -> bytes:
            # The sidecar deletes user:2 after it was read as stale, before the repair.
            cache.delete(f"{prefix}:user:2")
            return loader(template, row)

        repaired = verify_keys(conn, cache, spec, loader=invalidated, repair=True, others=[other])
        assert repaired.stale == [f"{prefix}:user:2"] and repaired.drift == 2
        assert repaired.repaired == 1, "counted what was sent, not what Redis removed"
        after = verify_keys(conn, cache, spec, loader=loader, others=[other])
        assert after.ok and after.cached == 2
        assert cache.exists(f"{prefix}:user:98", f"{prefix}:user:list") == 2
        assert cache.exists(f"{prefix}:by-name:team-7") == 1
    finally:
        for key in cache.scan_iter(match=f"{prefix}:*"):
            cache.delete(key)
        with conn.cursor() as c:
            c.execute(f"DROP TABLE {table}")


def test_repair_writes_above_a_document_version_ahead_of_the_table(conn: Any, es_url: str) -> None:
    run = uuid.uuid4().hex[:8]
    table = f"verify_ahead_{run}"
    index = f"verify-ahead-{run}"
    with conn.cursor() as c:
        c.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, title_text VARCHAR(50))")
        c.executemany(f"INSERT INTO {table} VALUES (%s, %s)", [(1, "t1"), (2, "t2")])
    spec = resolve(
        "Post",
        Sync(search=Projection(index=index, fields=["title"])),
        table=table,
        columns={"id": "id", "title": "title_text"},
        primary_key=["id"],
    )
    es = elasticsearch_client(Settings(es_url=es_url))
    file, pos = server.master_status(conn)
    now = BinlogPosition(file, pos, 0)
    # Written with a version from another server's binlog (a later file index): ahead.
    ahead = BinlogPosition("mysql-bin.009999", 4, 0)
    SearchSink(es).apply(
        [IndexDoc(index, "1", {"title": "t1"}, now), IndexDoc(index, "2", {"title": "OLD"}, ahead)]
    )
    try:
        report = verify_index(conn, es, spec, spec.projections[0], repair_at=now)
        assert report.stale == ["2"] and report.ahead == ["2"] and report.repaired == 1
        assert "1 repaired (1 written above a newer stored version)" in report.summary()
        again = verify_index(conn, es, spec, spec.projections[0])
        assert again.ok, again.summary()
        assert es.get(index=index, id="2")["_version"] == ahead.version + 1
    finally:
        es.indices.delete(index=index, ignore_unavailable=True)
        es.close()
        with conn.cursor() as c:
            c.execute(f"DROP TABLE {table}")
