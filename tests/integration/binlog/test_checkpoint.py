"""Resume points and the checkpoint stores (table in MariaDB, JSON file)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pymysql
import pytest

from cachesync.binlog import (
    CHECKPOINT_TABLE_SQL,
    FileCheckpointStore,
    ResumePoint,
    TableCheckpointStore,
    checkpoint_store,
)
from cachesync.changes import BinlogPosition
from cachesync.errors import ConfigurationError, DecodeError, TransientError
from tests.integration.binlog.harness import BinlogEnv

pytestmark = pytest.mark.services


def test_resume_point_text_form() -> None:
    clean = ResumePoint("mysql-bin.000003", 1234)
    assert clean.encode() == "binlog:mysql-bin.000003:1234"
    inside = ResumePoint("mysql-bin.000003", 1234, BinlogPosition("mysql-bin.000003", 5678, 3))
    assert inside.encode() == "binlog:mysql-bin.000003:1234+5678.3"
    for point in (clean, inside):
        assert ResumePoint.decode(point.encode()) == point
    assert ResumePoint.decode(inside.encode(), 17.5).commit_time == 17.5
    for bad in ("", "binlog:x", "mysql-bin.000003:4", "binlog:f.1:1234+99.0", "binlog:f.1:2"):
        with pytest.raises(DecodeError):
            ResumePoint.decode(bad)


def test_resume_point_skips_exactly_the_handled_rows() -> None:
    point = ResumePoint("f.000001", 100, BinlogPosition("f.000001", 500, 2))
    assert point.already_handled(BinlogPosition("f.000001", 300, 40))
    assert point.already_handled(BinlogPosition("f.000001", 500, 2))
    assert not point.already_handled(BinlogPosition("f.000001", 500, 3))
    assert not point.already_handled(BinlogPosition("f.000001", 700, 0))
    assert not ResumePoint("f.000001", 100).already_handled(BinlogPosition("f.000001", 300, 0))


def test_file_store_roundtrip_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "state" / "checkpoint.json"
    store = FileCheckpointStore(path)
    assert store.load("a") is None
    store.save("a", "binlog:f.000001:4", 10.0)
    store.save("b", "binlog:f.000002:8")
    store.save("a", "binlog:f.000001:99", 11.0)
    loaded = store.load("a")
    assert loaded is not None and (loaded.position, loaded.commit_time) == (
        "binlog:f.000001:99",
        11.0,
    )
    assert json.loads(path.read_text())["b"]["position"] == "binlog:f.000002:8"
    store.delete("b")
    assert store.load("b") is None and store.load("a") is not None
    leftovers = [
        p for p in os.listdir(path.parent) if p not in ("checkpoint.json", "checkpoint.json.lock")
    ]
    assert leftovers == [], "temporary files must be renamed or removed"
    path.write_text("{not json")
    with pytest.raises(DecodeError, match="not JSON"):
        store.load("a")


def test_table_store_roundtrip(binlog_env: BinlogEnv) -> None:
    env = binlog_env
    store = TableCheckpointStore(env.root)
    try:
        assert store.load("p") is None
        store.save("p", "binlog:mysql-bin.000001:4", 1.5)
        store.save("p", "binlog:mysql-bin.000001:400", 2.5)
        store.save("q", "binlog:mysql-bin.000001:8")
        loaded = store.load("p")
        assert loaded is not None
        assert (loaded.position, loaded.commit_time) == ("binlog:mysql-bin.000001:400", 2.5)
        assert loaded.updated_at > 0
        store.delete("q")
        assert store.load("q") is None
    finally:
        store.close()
    # Plain SQL, as documented (Django and DBAs create the same table).
    (ddl,) = env.sql("SHOW CREATE TABLE cachesync_checkpoint")[0][1:]
    for column in ("`name` varchar(191) NOT NULL", "`position` varchar(255) NOT NULL"):
        assert column in ddl
    assert "PRIMARY KEY (`name`)" in ddl
    assert "CREATE TABLE IF NOT EXISTS cachesync_checkpoint" in CHECKPOINT_TABLE_SQL


def test_table_store_without_create_privilege_explains(binlog_env: BinlogEnv) -> None:
    store = TableCheckpointStore(binlog_env.sidecar_params)  # SELECT + replication only
    try:
        with pytest.raises(ConfigurationError) as caught:
            store.save("p", "binlog:mysql-bin.000001:4")
    finally:
        store.close()
    assert "CREATE TABLE IF NOT EXISTS cachesync_checkpoint" in str(caught.value)
    assert "sidecar-pw" not in str(caught.value)


def test_table_store_in_another_database(binlog_env: BinlogEnv) -> None:
    env = binlog_env
    store = checkpoint_store(env.root_url.replace(env.schema, "cachesync"), env.sidecar_url)
    assert (
        isinstance(store, TableCheckpointStore)
        and "cachesync.cachesync_checkpoint" in store.describe()
    )
    name = f"test-{env.schema}"
    try:
        store.save(name, "binlog:mysql-bin.000001:4")
        conn = pymysql.connect(**{**env.root, "database": "cachesync"})
        with conn.cursor() as cur:
            cur.execute("SELECT position FROM cachesync_checkpoint WHERE name = %s", (name,))
            assert cur.fetchone() == ("binlog:mysql-bin.000001:4",)
        conn.close()
    finally:
        store.delete(name)
        store.close()


def test_store_factory(tmp_path: Path) -> None:
    assert isinstance(checkpoint_store(f"file:{tmp_path}/c.json", None), FileCheckpointStore)
    with pytest.raises(ConfigurationError, match="must name a database") as caught:
        checkpoint_store(None, "mysql://u:secret@h:3306")
    assert "secret" not in str(caught.value)
    with pytest.raises(ConfigurationError, match="mysql_url"):
        checkpoint_store(None, None)


def test_table_store_with_a_wrong_password_is_a_configuration_error(
    binlog_env: BinlogEnv,
) -> None:
    """Access denied never fixes itself: name the setting instead of retrying forever."""
    store = TableCheckpointStore({**binlog_env.sidecar_params, "password": "not-the-password"})
    try:
        with pytest.raises(ConfigurationError) as caught:
            store.load("p")
    finally:
        store.close()
    assert caught.value.context["setting"] == "checkpoint_url"
    assert caught.value.context["code"] == 1045
    assert "not-the-password" not in str(caught.value)


def test_table_store_on_a_closed_port_is_transient(binlog_env: BinlogEnv) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = TableCheckpointStore({**binlog_env.root, "port": port})
    with pytest.raises(TransientError, match="unreachable"):
        store.save("p", "binlog:mysql-bin.000001:4")
    store.close()
