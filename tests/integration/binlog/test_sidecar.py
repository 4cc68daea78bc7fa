"""The sidecar, in a thread, against the private MariaDB, Redis and Elasticsearch API.

Every kind of write that bypasses the ORM must invalidate the keys of the old
AND the new row image and bring the index to the table's projection.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest
import redis as redis_lib

from cachesync.apply import Applier
from cachesync.errors import SchemaError
from cachesync.policies import ImmediateRetryPolicy
from cachesync.sinks import RedisSink, SearchSink
from tests.integration.binlog.harness import BinlogEnv, running, wait_for
from tests.support import services as svc

pytestmark = pytest.mark.services


def _insert(env: BinlogEnv, ids: range, state: int = 0) -> None:
    values = ", ".join(f"({i}, 'u{i}', 'n{i}', 'u{i}@example.com', {state})" for i in ids)
    env.sql(f"INSERT INTO users VALUES {values}")


def test_raw_sql_insert_update_delete(binlog_env: BinlogEnv) -> None:
    env = binlog_env
    with running(env.sidecar()):
        keys = env.keys(1, "alice")
        env.set_keys(keys)
        env.sql("INSERT INTO users VALUES (1, 'alice', 'Al', 'alice@example.com', 0)")
        env.sync_point()
        assert env.existing(keys) == []
        assert env.documents()["1"] == {
            "username": "alice",
            "nickname": "Al",
            "email": "alice@example.com",
        }

        # Renaming: the key of the OLD name and of the new one must both go.
        old_and_new = env.keys(1, "alice") + env.keys(1, "alicia")
        env.set_keys(old_and_new)
        env.sql("UPDATE users SET user_name = 'alicia', nickname = 'Ali' WHERE id = 1")
        env.sync_point()
        assert env.existing(old_and_new) == []
        assert env.documents()["1"]["username"] == "alicia"

        # when= turns false: the document goes, the keys too.
        env.set_keys(env.keys(1, "alicia"))
        env.sql("UPDATE users SET state = 1 WHERE id = 1")
        env.sync_point()
        assert env.existing(env.keys(1, "alicia")) == []
        assert "1" not in env.documents()

        env.sql("UPDATE users SET state = 0 WHERE id = 1")
        env.set_keys(env.keys(1, "alicia"))
        env.sql("DELETE FROM users WHERE id = 1")
        env.sync_point()
        assert env.existing(env.keys(1, "alicia")) == []
        env.assert_index_matches_table()


def test_multi_row_statements(binlog_env: BinlogEnv) -> None:
    env = binlog_env
    with running(env.sidecar()):
        _insert(env, range(1, 301))
        env.sync_point()
        env.assert_index_matches_table()

        # Multi-row UPDATE ... WHERE renaming 150 users: 300 old + new by-name keys.
        touched = [k for i in range(1, 151) for k in env.keys(i, f"u{i}") + env.keys(i, f"v{i}")]
        env.set_keys(touched)
        env.sql("UPDATE users SET user_name = CONCAT('v', id) WHERE id BETWEEN 1 AND 150")
        env.sync_point()
        assert env.existing(touched) == []

        # INSERT ... SELECT copies 100 rows under new ids.
        copied = [k for i in range(1001, 1101) for k in env.keys(i, f"c{i}")]
        env.set_keys(copied)
        env.sql(
            "INSERT INTO users (id, user_name, nickname, email, state) "
            "SELECT id + 1000, CONCAT('c', id + 1000), nickname, email, state "
            "FROM users WHERE id BETWEEN 1 AND 100"
        )
        env.sync_point()
        assert env.existing(copied) == []

        # Multi-row DELETE.
        deleted = [k for i in range(151, 301) for k in env.keys(i, f"u{i}")]
        env.set_keys(deleted)
        env.sql("DELETE FROM users WHERE id > 150 AND id <= 300")
        env.sync_point()
        assert env.existing(deleted) == []
        env.assert_index_matches_table()


def test_primary_key_change(binlog_env: BinlogEnv) -> None:
    env = binlog_env
    with running(env.sidecar()):
        _insert(env, range(1, 11))
        env.sync_point()
        touched = [
            k for i in range(1, 11) for k in env.keys(i, f"u{i}") + env.keys(i + 500, f"u{i}")
        ]
        env.set_keys(touched)
        env.sql("UPDATE users SET id = id + 500 WHERE id BETWEEN 1 AND 10")
        env.sync_point()
        assert env.existing(touched) == []
        docs = env.documents()
        assert not {str(i) for i in range(1, 11)} & set(docs), "old documents must be deleted"
        assert {str(i + 500) for i in range(1, 11)} <= set(docs)
        env.assert_index_matches_table()


def test_multi_statement_transaction_and_rollback(binlog_env: BinlogEnv) -> None:
    env = binlog_env
    with running(env.sidecar()):
        keys = env.keys(7, "seven") + env.keys(8, "eight")
        env.set_keys(keys)
        env.transaction(
            [
                "INSERT INTO users VALUES (7, 'seven', 's', NULL, 0)",
                "INSERT INTO users VALUES (8, 'eight', 'e', NULL, 0)",
                "UPDATE users SET nickname = 'S' WHERE id = 7",
            ]
        )
        # A rolled-back transaction never reaches the binlog.
        conn = env.connect()
        conn.begin()
        with conn.cursor() as cur:
            cur.execute("INSERT INTO users VALUES (9, 'nine', 'n', NULL, 0)")
        conn.rollback()
        conn.close()
        env.sync_point()
        assert env.existing(keys) == []
        assert env.documents()["7"]["nickname"] == "S"
        env.assert_index_matches_table()


def test_alter_table_while_streaming(binlog_env: BinlogEnv) -> None:
    """Columns added/renamed around the declared ones never shift values into wrong keys."""
    env = binlog_env
    with running(env.sidecar()):
        _insert(env, range(1, 4))
        env.sync_point()
        env.sql(
            "ALTER TABLE users ADD COLUMN age INT NULL AFTER id, ADD COLUMN note VARCHAR(300) NULL FIRST"
        )
        touched = env.keys(1, "u1") + env.keys(1, "after-add")
        env.set_keys(touched)
        env.sql("UPDATE users SET user_name = 'after-add', age = 42, note = 'x' WHERE id = 1")
        env.sync_point()
        assert env.existing(touched) == []
        env.sql("ALTER TABLE users RENAME COLUMN age TO years, DROP COLUMN note")
        touched = env.keys(2, "u2") + env.keys(2, "after-rename")
        env.set_keys(touched)
        env.sql("UPDATE users SET user_name = 'after-rename', years = 7 WHERE id = 2")
        env.sync_point()
        assert env.existing(touched) == []
        assert env.documents()["2"] == {
            "username": "after-rename",
            "nickname": "n2",
            "email": "u2@example.com",
        }
        env.assert_index_matches_table()


def test_dropped_key_column_stops_with_a_clear_error(binlog_env: BinlogEnv) -> None:
    env = binlog_env
    sidecar = env.sidecar()
    with running(sidecar, wait_leading=False) as errors:
        wait_for(sidecar.leading.is_set, 30, "the sidecar to lead")
        _insert(env, range(1, 3))
        env.sync_point()
        env.sql("ALTER TABLE users DROP COLUMN user_name")
        before_update = env.master_status()
        env.sql("UPDATE users SET nickname = 'x' WHERE id = 1")
        wait_for(lambda: bool(errors), 30, "the sidecar to stop")
    assert isinstance(errors[0], SchemaError)
    message = str(errors[0])
    assert "user_name" in message and env.schema in message and "dropped or renamed" in message
    assert "change at gtid:" in message  # MariaDB: GTID positions
    saved = sidecar.saved
    assert saved is not None and (saved.file, saved.pos) <= before_update, (
        "the checkpoint must stay before the change it cannot handle"
    )


def test_renamed_projected_column_stops_with_a_clear_error(binlog_env: BinlogEnv) -> None:
    env = binlog_env
    sidecar = env.sidecar()
    with running(sidecar, wait_leading=False) as errors:
        wait_for(sidecar.leading.is_set, 30, "the sidecar to lead")
        env.sql("ALTER TABLE users RENAME COLUMN nickname TO nick")
        env.sql("INSERT INTO users VALUES (5, 'e', 'n', NULL, 0)")
        wait_for(lambda: bool(errors), 30, "the sidecar to stop")
    assert isinstance(errors[0], SchemaError), errors[0]
    assert "nickname" in str(errors[0])


def test_checkpoint_waits_while_redis_is_down(binlog_env: BinlogEnv) -> None:
    """HandOffError: the same batch is retried and the checkpoint does not move until applied."""
    env = binlog_env
    server = svc.start_redis(svc.free_port(), env.tmp / "redis")
    deleted: list[str] = []

    class Recording(RedisSink):
        def delete(self, keys: Sequence[str]) -> int:
            count = super().delete(keys)
            deleted.extend(keys)
            return count

    client = redis_lib.Redis(port=server.port, socket_timeout=0.5, socket_connect_timeout=0.5)
    applier = Applier(
        Recording(client),
        SearchSink(env.es),
        policy=ImmediateRetryPolicy(attempts=2, min_wait=0.01, max_wait=0.05),
    )
    sidecar = env.sidecar(applier=applier)
    try:
        with running(sidecar):
            env.sql("INSERT INTO users VALUES (1, 'one', 'n', NULL, 0)")
            wait_for(lambda: env.keys(1, "one")[0] in deleted, 30, "the first delete")
            server.stop()
            env.sql("INSERT INTO users VALUES (2, 'two', 'n', NULL, 0)")
            (file, pos) = env.master_status()
            time.sleep(1.5)
            assert sidecar.saved is not None and sidecar.saved.pos < pos
            assert env.keys(2, "two")[0] not in deleted
            server.start()
            wait_for(lambda: env.keys(2, "two")[0] in deleted, 30, "the delete after Redis is back")
            wait_for(
                lambda: (
                    sidecar.saved is not None
                    and (sidecar.saved.file, sidecar.saved.pos) >= (file, pos)
                ),
                30,
                "the checkpoint to move on",
            )
    finally:
        server.kill()


def test_idle_stream_advances_the_checkpoint(binlog_env: BinlogEnv) -> None:
    env = binlog_env
    env.sql("CREATE TABLE other (id INT PRIMARY KEY)")
    sidecar = env.sidecar(idle_checkpoint_seconds=0.1)
    with running(sidecar):
        env.sql("INSERT INTO other VALUES (1), (2)")
        target = env.master_status()
        wait_for(
            lambda: sidecar.saved is not None and (sidecar.saved.file, sidecar.saved.pos) >= target,
            30,
            "the checkpoint to pass unwatched transactions",
        )
        assert sidecar.rows == 0
