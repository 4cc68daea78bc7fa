"""Sessions with ``binlog_row_image = MINIMAL`` / ``NOBLOB`` next to FULL ones, through a sidecar.

Real MariaDB, Redis and Elasticsearch API; the sidecar runs in a thread. A
partial image must never stop the stream: what its after image lacks is
re-read from the table, what its before image lacks is reported (ERROR line
and the dead-letter hook), and every FULL change around it is applied as usual.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from elasticsearch import helpers

from cachesync import Projection, Sync, metrics, resolve
from cachesync.binlog.partial import PartialChange
from cachesync.registry import TableSpec
from cachesync.testing import MemoryDeadLetterStore
from tests.integration.binlog import models
from tests.integration.binlog.harness import BinlogEnv, running

pytestmark = pytest.mark.services

NOTES_DDL = """CREATE TABLE notes (
    id INT NOT NULL PRIMARY KEY,
    title VARCHAR(64) NOT NULL,
    body TEXT NULL,
    views INT NOT NULL DEFAULT 0
) ENGINE=InnoDB"""


def _notes_spec(schema: str) -> TableSpec:
    prefix = models.key_prefix(schema)
    sync = Sync(
        keys=[prefix + "note:{id}", prefix + "note:by-title:{title}"],
        search=Projection(index=f"{schema.lower()}-notes", fields=["title", "body"]),
    )
    columns = {"id": "id", "title": "title", "body": "body", "views": "views"}
    return resolve(
        f"tests.binlog.{schema}.Note",
        sync,
        table="notes",
        schema=schema,
        columns=columns,
        primary_key=["id"],
    )


def _session(env: BinlogEnv, image: str) -> Any:
    conn = env.connect()
    with conn.cursor() as cur:
        cur.execute(f"SET SESSION binlog_row_image = '{image}'")
    return conn


def _run(conn: Any, statement: str) -> None:
    with conn.cursor() as cur:
        cur.execute(statement)


def _notes_documents(env: BinlogEnv, index: str) -> dict[str, dict[str, Any]]:
    env.es.indices.refresh(index=index, ignore_unavailable=True)
    hits = helpers.scan(env.es, index=index, query={"query": {"match_all": {}}})
    return {hit["_id"]: hit["_source"] for hit in hits}


def _notes_table(env: BinlogEnv) -> dict[str, dict[str, Any]]:
    rows = env.sql("SELECT id, title, body FROM notes")
    return {str(r[0]): {"title": r[1], "body": r[2]} for r in rows}


def test_partial_images_are_reread_or_reported_and_the_stream_goes_on(
    binlog_env: BinlogEnv, caplog: pytest.LogCaptureFixture
) -> None:
    env = binlog_env
    prefix = models.key_prefix(env.schema)
    env.sql(NOTES_DDL)
    env.sql("ALTER TABLE users ADD COLUMN bio TEXT NULL")  # no declaration reads it
    notes = _notes_spec(env.schema)
    notes_index = notes.projections[0].index
    registry = env.registry()
    registry.add(notes)
    letters = MemoryDeadLetterStore()
    sidecar = env.sidecar(registry=registry)
    sidecar.dead_letters = letters
    minimal, noblob = _session(env, "MINIMAL"), _session(env, "NOBLOB")
    before = metrics.snapshot()
    caplog.set_level(logging.ERROR, logger="cachesync.partial")
    try:
        with running(sidecar) as errors:
            # -- inserts: FULL, MINIMAL with columns left to their defaults, NOBLOB -------------
            inserted = [k for i in (1, 2, 3, 4, 5) for k in env.keys(i, f"u{i}")]
            inserted += [*env.keys(10, "m10"), prefix + "note:1", prefix + "note:by-title:t1"]
            inserted += [prefix + "note:2", prefix + "note:by-title:t2"]
            env.set_keys(inserted)
            env.sql(
                "INSERT INTO users (id, user_name, nickname, email, state) VALUES "
                + ", ".join(f"({i}, 'u{i}', 'n{i}', 'u{i}@x', 0)" for i in (1, 2, 3, 4, 5))
            )
            _run(minimal, "INSERT INTO users (id, user_name, nickname) VALUES (10, 'm10', 'mn')")
            _run(noblob, "INSERT INTO notes (id, title, body) VALUES (1, 't1', 'first body')")
            _run(noblob, "INSERT INTO notes (id, title) VALUES (2, 't2')")
            env.sync_point()
            assert env.existing(inserted) == []
            env.assert_index_matches_table()
            assert _notes_documents(env, notes_index) == _notes_table(env)

            # -- updates ---------------------------------------------------------------------------
            renamed_old = env.keys(3, "u3")[1]
            touched = env.keys(10, "m10") + env.keys(3, "u3") + env.keys(3, "renamed")
            touched += env.keys(4, "u4") + env.keys(1, "u1") + env.keys(2, "u2")
            touched += [*env.keys(2, "full2"), prefix + "note:1", prefix + "note:by-title:t1"]
            touched += [prefix + "note:by-title:t1b", prefix + "note:2"]
            env.set_keys(touched)
            _run(minimal, "UPDATE users SET nickname = 'changed' WHERE id = 10")  # re-read
            _run(minimal, "UPDATE users SET user_name = 'renamed' WHERE id = 3")  # old name lost
            env.sql("UPDATE users SET nickname = 'full' WHERE id = 1")
            _run(minimal, "UPDATE users SET state = 1 WHERE id = 4")  # document goes
            env.sql("UPDATE users SET user_name = 'full2' WHERE id = 2")
            _run(noblob, "UPDATE notes SET title = 't1b' WHERE id = 1")  # body re-read
            _run(noblob, "UPDATE notes SET body = 'second body' WHERE id = 2")
            env.sync_point()
            assert env.existing(touched) == [renamed_old], "only the reported key may survive"
            env.assert_index_matches_table()
            assert "4" not in env.documents()
            assert _notes_documents(env, notes_index) == _notes_table(env)

            # -- deletes ---------------------------------------------------------------------------
            deleted = env.keys(5, "u5") + env.keys(1, "u1")
            env.set_keys(deleted)
            _run(minimal, "DELETE FROM users WHERE id = 5")  # by-name key unknowable
            env.sql("DELETE FROM users WHERE id = 1")
            env.sync_point()
            assert env.existing(deleted) == [env.keys(5, "u5")[1]]
            env.assert_index_matches_table()

            # -- a later FULL change is applied: the stream never stopped ---------------------------
            later = env.keys(2, "full2")
            env.set_keys(later)
            env.sql("UPDATE users SET nickname = 'later' WHERE id = 2")
            env.sync_point()
            assert env.existing(later) == []
            assert env.documents()["2"]["nickname"] == "later"
            assert not errors and sidecar.leading.is_set()
    finally:
        minimal.close()
        noblob.close()
        env.es.indices.delete(index=notes_index, ignore_unavailable=True)

    # Exactly the two changes whose old key could not be known were reported.
    reported = {
        (c.table, dict(c.before or {}).get("id"), c.op.value)
        for c in (letter.change for letter in letters.buried)
    }
    assert reported == {("users", 3, "update"), ("users", 5, "delete")}
    for change, reason in ((letter.change, letter.error) for letter in letters.buried):
        assert isinstance(change, PartialChange)
        assert "binlog_row_image=MINIMAL" in reason and "user:by-name:{username}" in reason
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 2, lines
    position = str(letters.buried[0].change.position)
    assert any(
        f"{env.schema}.users" in line and position in line and "{'id': 3}" in line
        and "binlog_row_image=MINIMAL" in line
        for line in lines
    ), lines  # fmt: skip
    after = metrics.snapshot()
    assert after["partial_unknowable_total"] - before["partial_unknowable_total"] == 2
    assert after["partial_images_total"] - before["partial_images_total"] >= 7
    assert after["partial_rereads_total"] - before["partial_rereads_total"] >= 4
