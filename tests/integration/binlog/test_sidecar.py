"""The sidecar, in a thread, against the private MariaDB, Redis and Elasticsearch API.

Every kind of write that bypasses the ORM must invalidate the keys of the old
AND the new row image and bring the index to the table's projection.
"""

from __future__ import annotations

import pytest

from tests.integration.binlog.harness import BinlogEnv, running

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
