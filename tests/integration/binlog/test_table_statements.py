"""TRUNCATE, DROP and RENAME of a watched table through raw SQL while the sidecar runs.

None of them logs rows: afterwards no key a template could have rendered for
the old rows may survive, no document of theirs may stay in the index, rows
written after the statement must be streamed (and not purged by it), and the
stream must go on.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import pytest

from cachesync import Projection, Registry, Sync, resolve
from cachesync.binlog.checkpoint import FileCheckpointStore, ResumePoint
from cachesync.changes import BinlogPosition
from cachesync.errors import SchemaError, TransientError
from cachesync.sinks import RedisSink
from tests.integration.binlog import models
from tests.integration.binlog.harness import BinlogEnv, running, wait_for

pytestmark = pytest.mark.services

SENTINEL = "INSERT INTO users VALUES (0, 'sentinel', 'sentinel-0', NULL, 0)"


def _insert(env: BinlogEnv, ids: Sequence[int], tag: str = "", table: str = "users") -> None:
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        values = ", ".join(
            f"({i}, 'u{tag}{i}', 'n{tag}{i}', 'u{i}@example.com', {i % 5 == 4:d})" for i in chunk
        )
        env.sql(f"INSERT INTO {table} VALUES {values}")


def _cache(env: BinlogEnv, ids: Sequence[int], tag: str = "") -> list[str]:
    """Fill the cache for rows *ids* as a read path would; return the keys."""
    keys = [k for i in ids for k in env.keys(i, f"u{tag}{i}")]
    env.set_keys(keys)
    return keys


def _purge_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "purged" in r.getMessage()]


def test_truncate_purges_every_key_and_document_and_the_stream_goes_on(
    binlog_env: BinlogEnv, caplog: pytest.LogCaptureFixture
) -> None:
    env = binlog_env
    caplog.set_level(logging.INFO, logger="cachesync.sidecar")
    other = f"{env.schema}-other:user:1"  # another namespace: must survive
    env.redis.set(other, "keep")
    with running(env.sidecar()):
        ids = list(range(1, 2001))
        _insert(env, ids)
        env.sync_point()
        assert len(env.documents()) == 1 + 1600
        old = _cache(env, ids)
        assert len(old) == 4000
        # Written right before the statement, maybe in the same batch: applied before
        # the purge (applied after it, their documents would be orphans).
        _insert(env, list(range(2001, 2301)))
        env.sql("TRUNCATE TABLE users")
        # Written right after the statement: streamed, and never purged by it.
        env.sql(SENTINEL)
        _insert(env, [5, 6, 7], tag="new")
        env.sync_point()
        assert env.existing(old) == []
        env.assert_index_matches_table()
        assert set(env.documents()) == {"0", "5", "6", "7"}
        assert env.redis.get(other) == b"keep"
        # The stream goes on.
        new_keys = _cache(env, [5], tag="new")
        env.sql("UPDATE users SET nickname = 'later' WHERE id = 5")
        env.sync_point()
        assert env.existing(new_keys) == []
        assert env.documents()["5"]["nickname"] == "later"
    lines = _purge_lines(caplog)
    assert len(lines) == 1, lines
    assert f"TRUNCATE of {env.schema}.users" in lines[0]
    assert "TRUNCATE TABLE users" in lines[0]
    prefix = models.key_prefix(env.schema)
    # Both templates' patterns were walked; the first (user:*) also covers by-name keys.
    # 4000, or 4001 when the sync point's sentinel key was set before the purge ran.
    counts = re.search(r"purged (\d+) key\(s\) \['(.*?)': (\d+), '(.*?)': 0\]", lines[0])
    assert counts is not None, lines[0]
    assert counts[1] == counts[3] and int(counts[1]) in (4000, 4001)
    assert (counts[2], counts[4]) == (f"{prefix}user:*", f"{prefix}user:by-name:*")
    assert f"1841 document(s) [{env.index}: 1841]" in lines[0]  # 1 + 1600 + 240, all before it
    env.redis.delete(other)


def test_drop_then_create_under_the_same_name(binlog_env: BinlogEnv) -> None:
    env = binlog_env
    with running(env.sidecar()):
        ids = list(range(1, 801))
        _insert(env, ids)
        env.sync_point()
        old = _cache(env, ids)
        env.sql("DROP TABLE IF EXISTS users, no_such_table")
        env.sql(models.USERS_DDL)
        env.sql(SENTINEL)
        _insert(env, list(range(601, 801)), tag="v2")  # 200 rows, ids shared with the old
        env.sync_point()
        assert env.existing(old) == []
        env.assert_index_matches_table()
        assert env.documents()["700"]["username"] == "uv2700"


def test_etl_rename_swap_reindexes_the_table_renamed_in(
    binlog_env: BinlogEnv, caplog: pytest.LogCaptureFixture
) -> None:
    env = binlog_env
    caplog.set_level(logging.INFO, logger="cachesync.sidecar")
    with running(env.sidecar()):
        ids = list(range(1, 401))
        _insert(env, ids)
        env.sync_point()
        # The rebuilt table: some rows changed, some gone, some new, none of it streamed
        # (users_new is not watched).
        env.sql(models.USERS_DDL.replace("CREATE TABLE users", "CREATE TABLE users_new"))
        env.sql(SENTINEL.replace("users", "users_new"))
        _insert(env, list(range(201, 601)), tag="etl", table="users_new")
        old = _cache(env, ids)
        rebuilt = _cache(env, list(range(201, 601)), tag="etl")  # filled from a replica, say
        env.sql("RENAME TABLE users TO users_old, users_new TO users")
        env.sync_point()
        assert env.existing(old) == []
        assert env.existing(rebuilt) == []
        env.assert_index_matches_table()
        assert "1" not in env.documents() and env.documents()["300"]["username"] == "uetl300"
        # Changes after the swap stream as usual and win over the re-read.
        env.sql("UPDATE users SET nickname = 'after' WHERE id = 300")
        env.sql("DELETE FROM users WHERE id = 301")
        env.sync_point()
        env.assert_index_matches_table()
        assert env.documents()["300"]["nickname"] == "after"
    lines = _purge_lines(caplog)
    assert len(lines) == 1 and "RENAME away/RENAME in of" in lines[0], lines
    assert "re-read tests.binlog." in lines[0] and "401 row(s)" in lines[0]


def test_an_update_while_renamed_away_leaves_nothing_stale(binlog_env: BinlogEnv) -> None:
    env = binlog_env
    with running(env.sidecar()):
        ids = list(range(1, 401))
        _insert(env, ids)
        env.sync_point()
        env.sql("ALTER TABLE users RENAME TO users_tmp")
        old = _cache(env, ids)  # a reader filled the cache from somewhere meanwhile
        env.sql("UPDATE users_tmp SET nickname = CONCAT('moved-', id), user_name = CONCAT('m', id)")
        env.sql("DELETE FROM users_tmp WHERE id > 350")
        env.sql("RENAME TABLE `users_tmp` TO `users`")
        env.sync_point()
        assert env.existing(old) == []
        env.assert_index_matches_table()
        assert env.documents()["7"]["nickname"] == "moved-7"


class _RefusingPurge(RedisSink):
    """A Redis whose pattern walks fail (as during an outage), while deletes work."""

    def purge(self, pattern: str) -> int:
        raise TransientError(f"Redis SCAN MATCH {pattern!r} failed: connection refused")


def test_the_checkpoint_stays_before_the_statement_until_the_purge_is_done(
    binlog_env: BinlogEnv, caplog: pytest.LogCaptureFixture
) -> None:
    """Stopped (or killed) while the purge cannot finish: the next start redoes it."""
    env = binlog_env
    caplog.set_level(logging.ERROR, logger="cachesync.sidecar")
    store = FileCheckpointStore(env.tmp / "checkpoint.json")
    refusing = env.applier()
    refusing.keys = _RefusingPurge(env.redis)
    ids = list(range(1, 101))
    with running(env.sidecar(applier=refusing, store=store)):
        _insert(env, ids)
        env.sync_point()
        file, before = env.master_status()
        env.sql("TRUNCATE TABLE users")
        env.sql(SENTINEL)
        wait_for(
            lambda: any("purge after" in r.getMessage() for r in caplog.records),
            30,
            "the purge to be refused",
        )
        env.sql("UPDATE users SET nickname = 'after' WHERE id = 0")  # held behind the statement
    stored = store.load(env.schema)
    assert stored is not None
    point = ResumePoint.decode(stored.position)
    assert BinlogPosition(point.file, point.pos) <= BinlogPosition(file, before)
    old = _cache(env, ids)  # only a purge redone after the restart can remove these
    with running(env.sidecar(store=store)):
        env.sync_point()
        assert env.existing(old) == []
        env.assert_index_matches_table()
        assert set(env.documents()) == {"0"}


def test_other_tables_and_temporary_tables_purge_nothing(
    binlog_env: BinlogEnv, caplog: pytest.LogCaptureFixture
) -> None:
    env = binlog_env
    caplog.set_level(logging.INFO, logger="cachesync.sidecar")
    with running(env.sidecar()):
        _insert(env, [1, 2, 3])
        env.sync_point()
        cached = _cache(env, [1, 2, 3])
        env.sql("CREATE TABLE unrelated (id INT PRIMARY KEY)")
        env.sql("TRUNCATE TABLE unrelated")
        env.sql("RENAME TABLE unrelated TO unrelated2")
        env.sql("DROP TABLE unrelated2")
        conn = env.connect()
        try:
            with conn.cursor() as cur:  # a temporary table shadowing the watched name
                cur.execute("CREATE TEMPORARY TABLE users (id INT PRIMARY KEY)")
                cur.execute("TRUNCATE TABLE users")
                cur.execute("DROP TEMPORARY TABLE users")
        finally:
            conn.close()
        env.sql("ALTER TABLE users ADD COLUMN extra INT NULL")
        env.sql("ALTER TABLE users RENAME COLUMN extra TO extra2")
        env.sync_point()
        assert env.existing(cached) == cached
        env.assert_index_matches_table()
    assert _purge_lines(caplog) == []


def test_a_shared_index_is_emptied_and_the_other_table_read_again(binlog_env: BinlogEnv) -> None:
    """Documents carry no table: the other writer's documents are restored from its table."""
    env = binlog_env
    registry = env.registry()
    registry.add(
        resolve(
            f"tests.binlog.{env.schema}.Staff",
            Sync(
                keys=[models.key_prefix(env.schema) + "staff:{id}"],
                search=Projection(
                    index=env.index,
                    id="staff-{id}",
                    fields=list(models.DOC_FIELDS),
                ),
            ),
            table="staff",
            schema=env.schema,
            columns=models.USER_COLUMNS,
            primary_key=["id"],
        )
    )
    env.sql(models.USERS_DDL.replace("CREATE TABLE users", "CREATE TABLE staff"))
    with running(env.sidecar(registry=registry)):
        _insert(env, list(range(1, 101)))
        _insert(env, list(range(1, 51)), tag="staff", table="staff")
        env.sync_point()
        assert len(env.documents()) == 1 + 80 + 50
        env.sql("TRUNCATE TABLE users")
        env.sql(SENTINEL)
        env.sql("UPDATE staff SET nickname = 'after' WHERE id = 7")
        env.sync_point()
        documents = env.documents()
        staff = {i: d for i, d in documents.items() if i.startswith("staff-")}
        assert set(documents) - set(staff) == {"0"}
        assert len(staff) == 50 and staff["staff-7"]["nickname"] == "after"
        assert staff["staff-8"]["username"] == "ustaff8"


def test_a_template_without_literal_text_is_named_at_start_up(
    binlog_env: BinlogEnv, caplog: pytest.LogCaptureFixture
) -> None:
    env = binlog_env
    caplog.set_level(logging.WARNING, logger="cachesync.sidecar")
    registry = Registry()
    registry.add(
        resolve(
            f"tests.binlog.{env.schema}.Bare",
            Sync(keys=["{id}", models.key_prefix(env.schema) + "user:{id}"]),
            table="users",
            schema=env.schema,
            columns=models.USER_COLUMNS,
            primary_key=["id"],
        )
    )
    with running(env.sidecar(registry=registry)):
        pass
    notes = [r.getMessage() for r in caplog.records if "no literal text" in r.getMessage()]
    assert len(notes) == 1, notes
    assert "'{id}'" in notes[0] and f"tests.binlog.{env.schema}.Bare" in notes[0]
    assert "NOT purged" in notes[0]


def test_drop_database_purges_its_watched_tables(binlog_env: BinlogEnv) -> None:
    env = binlog_env
    with running(env.sidecar()):
        ids = list(range(1, 301))
        _insert(env, ids)
        env.sync_point()
        old = _cache(env, ids)
        env.sql(f"DROP DATABASE `{env.schema}`")
        env.sql(f"CREATE DATABASE `{env.schema}`")
        env.sql(f"USE `{env.schema}`")
        env.create_users()
        _insert(env, [1, 2], tag="again")
        env.sync_point()
        assert env.existing(old) == []
        env.assert_index_matches_table()
        assert set(env.documents()) == {"0", "1", "2"}


def test_a_table_renamed_in_without_a_declared_column_stops_the_sidecar(
    binlog_env: BinlogEnv,
) -> None:
    """A clear SchemaError, the checkpoint before the swap, and after the fix it is redone."""
    env = binlog_env
    store = FileCheckpointStore(env.tmp / "checkpoint.json")
    with (
        pytest.raises(SchemaError, match="re-reading users after 'RENAME TABLE users TO") as raised,
        running(env.sidecar(store=store)) as errors,
    ):
        _insert(env, [1, 2, 3])
        env.sync_point()
        env.sql(
            models.USERS_DDL.replace("CREATE TABLE users", "CREATE TABLE users_new").replace(
                "nickname VARCHAR(64) NOT NULL,", ""
            )
        )
        env.sql("INSERT INTO users_new (id, user_name, email) VALUES (0, 'sentinel', NULL)")
        env.sql("INSERT INTO users_new (id, user_name, email) VALUES (9, 'u9', NULL)")
        env.sql("RENAME TABLE users TO users_old, users_new TO users")
        wait_for(lambda: bool(errors), 60, "the sidecar to stop")
    message = str(raised.value)
    assert "nickname" in message and env.schema in message and "Traceback" not in message
    cached = _cache(env, [1, 2, 3])
    env.sql("ALTER TABLE users ADD COLUMN nickname VARCHAR(64) NOT NULL DEFAULT 'fixed'")
    with running(env.sidecar(store=store)):
        env.sync_point()
        assert env.existing(cached) == []
        env.assert_index_matches_table()
        assert env.documents()["9"]["nickname"] == "fixed"
