"""BinlogSource on the private MariaDB: filtering, exact resume, schema changes, reconnects."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from cachesync.binlog import BinlogSource, ReconnectPolicy, ResumePoint
from cachesync.changes import BinlogPosition, Op, RowChange
from cachesync.policies import Backoff
from cachesync.registry import Registry
from tests.integration.binlog.harness import BinlogEnv, FreezableProxy, next_server_id

pytestmark = pytest.mark.services

FAST_RECONNECT = ReconnectPolicy(backoff=Backoff(0.05, 0.5), heartbeat=0.5, read_timeout=3.0)


def _source(env: BinlogEnv, start: ResumePoint, registry: Registry | None = None) -> BinlogSource:
    return BinlogSource(
        env.sidecar_params,
        registry or env.registry(),
        server_id=next_server_id(),
        start=start,
        policy=FAST_RECONNECT,
    )


def _start(env: BinlogEnv) -> ResumePoint:
    file, pos = env.master_status()
    return ResumePoint(file, pos)


def _drain(
    source: BinlogSource, expected: int, *, chunk: int = 1000, timeout: float = 30
) -> list[RowChange]:
    out: list[RowChange] = []
    deadline = time.monotonic() + timeout
    while len(out) < expected:
        assert time.monotonic() < deadline, f"got {len(out)} of {expected} changes"
        out += source.poll(min(chunk, expected - len(out)), 0.5)
    assert source.poll(10, 0.3) == [], "more changes than expected"
    return out


def _summary(changes: list[RowChange]) -> list[tuple[Any, ...]]:
    return [(c.op, c.position, dict(c.before or {}), dict(c.after or {})) for c in changes]


def test_only_registered_tables_and_full_images(binlog_env: BinlogEnv) -> None:
    env = binlog_env
    env.sql("CREATE TABLE other (id INT PRIMARY KEY, v VARCHAR(10))")
    start = _start(env)
    env.sql("INSERT INTO other VALUES (1, 'x')")
    env.sql("INSERT INTO users VALUES (1, 'alice', 'Al', NULL, 0)")
    env.sql("UPDATE other SET v = 'y'")
    env.sql("UPDATE users SET nickname = 'Ally' WHERE id = 1")
    env.sql("DELETE FROM users WHERE id = 1")
    with _source(env, start) as source:
        changes = _drain(source, 3)
    assert [c.op for c in changes] == [Op.INSERT, Op.UPDATE, Op.DELETE]
    assert {(c.schema, c.table) for c in changes} == {(env.schema, "users")}
    row = {"id": 1, "user_name": "alice", "nickname": "Al", "email": None, "state": 0}
    assert changes[0].before is None and changes[0].after == row
    assert changes[1].before == row and changes[1].after == {**row, "nickname": "Ally"}
    assert changes[2].before == {**row, "nickname": "Ally"} and changes[2].after is None
    positions = [c.position for c in changes]
    assert all(isinstance(p, BinlogPosition) for p in positions)
    assert positions == sorted(positions)  # type: ignore[type-var]
    assert [p.version for p in positions] == sorted({p.version for p in positions})  # type: ignore[union-attr]
    assert all(c.commit_time and abs(c.commit_time - time.time()) < 120 for c in changes)


def test_same_table_name_in_another_schema_is_ignored(binlog_env: BinlogEnv) -> None:
    env = binlog_env
    other = env.schema + "_x"
    env.sql(f"CREATE DATABASE `{other}`")
    try:
        env.sql(f"CREATE TABLE `{other}`.users LIKE users")
        start = _start(env)
        env.sql(f"INSERT INTO `{other}`.users VALUES (5, 'x', 'x', NULL, 0)")
        env.sql("INSERT INTO users VALUES (6, 'y', 'y', NULL, 0)")
        with _source(env, start) as source:
            changes = _drain(source, 1)
        assert changes[0].after is not None and changes[0].after["id"] == 6
    finally:
        env.sql(f"DROP DATABASE `{other}`")


def test_resume_is_exact_inside_multi_row_transactions(binlog_env: BinlogEnv) -> None:
    """Cut the stream anywhere, resume from the resume point: nothing lost, nothing repeated."""
    env = binlog_env
    start = _start(env)
    env.sql(
        "INSERT INTO users VALUES "
        + ", ".join(f"({i}, 'u{i}', '{'n' * 40}{i}', NULL, 0)" for i in range(1, 1001))
    )
    env.transaction(
        [
            "UPDATE users SET nickname = CONCAT('m', id) WHERE id BETWEEN 1 AND 500",
            "INSERT INTO users VALUES (5000, 'z', 'z', NULL, 1)",
            "DELETE FROM users WHERE id > 800",
        ]
    )
    env.sql("UPDATE users SET state = 1 WHERE id = 5")
    total = 1000 + 500 + 1 + 201 + 1

    rng = random.Random(7)
    reference: list[RowChange] = []
    cuts: list[tuple[ResumePoint, int]] = []
    with _source(env, start) as source:
        while len(reference) < total:
            got = source.poll(rng.choice([1, 7, 100, 333, 1000]), 1.0)
            assert got, f"stream stalled after {len(reference)} changes"
            reference += got
            cuts.append((source.resume_point, len(reference)))
    assert len(reference) == total
    assert len({c.position for c in reference}) == total
    # Several cuts fall inside the 1000-row transaction and inside the 3-statement one.
    assert any(p.handled is not None for p, _n in cuts)
    for point, done in rng.sample(cuts, min(8, len(cuts))):
        restored = ResumePoint.decode(point.encode())  # as the checkpoint store keeps it
        with _source(env, restored) as source:
            rest = _drain(source, total - done)
        assert _summary(rest) == _summary(reference[done:]), f"resume from {point} differs"


def test_poll_waits_at_most_max_wait_when_idle(binlog_env: BinlogEnv) -> None:
    env = binlog_env
    with _source(env, _start(env)) as source:
        assert source.poll(10, 0.2) == []
        began = time.monotonic()
        assert source.poll(10, 0.4) == []
        assert 0.3 < time.monotonic() - began < 2.0
        env.sql("INSERT INTO users VALUES (1, 'a', 'a', NULL, 0)")
        assert len(source.poll(10, 5.0)) == 1


def test_alter_table_mid_stream_keeps_values_in_their_columns(binlog_env: BinlogEnv) -> None:
    """ADD (in the middle), DROP, RENAME, MODIFY columns while the reader runs.

    With binlog_row_metadata=FULL each table map carries the column names the
    rows were written with, and cached maps are keyed by their bytes, so an
    ALTER never lets old names label new positions.
    """
    env = binlog_env
    with _source(env, _start(env)) as source:
        env.sql("INSERT INTO users VALUES (1, 'alice', 'Al', 'a@x', 0)")
        (first,) = _drain(source, 1)
        assert first.after == {
            "id": 1,
            "user_name": "alice",
            "nickname": "Al",
            "email": "a@x",
            "state": 0,
        }

        env.sql("ALTER TABLE users ADD COLUMN age INT NULL AFTER id")
        env.sql("UPDATE users SET age = 30, nickname = 'Ali' WHERE id = 1")
        env.sql(
            "INSERT INTO users (id, age, user_name, nickname, email, state) VALUES (2, 40, 'bob', 'B', NULL, 1)"
        )
        update, insert = _drain(source, 2)
        assert update.before == {
            "id": 1,
            "age": None,
            "user_name": "alice",
            "nickname": "Al",
            "email": "a@x",
            "state": 0,
        }
        assert update.after == {
            "id": 1,
            "age": 30,
            "user_name": "alice",
            "nickname": "Ali",
            "email": "a@x",
            "state": 0,
        }
        assert insert.after == {
            "id": 2,
            "age": 40,
            "user_name": "bob",
            "nickname": "B",
            "email": None,
            "state": 1,
        }

        env.sql("ALTER TABLE users DROP COLUMN age")
        env.sql("ALTER TABLE users RENAME COLUMN email TO mail")
        env.sql("UPDATE users SET mail = 'b@x' WHERE id = 2")
        (renamed,) = _drain(source, 1)
        assert renamed.before == {
            "id": 2,
            "user_name": "bob",
            "nickname": "B",
            "mail": None,
            "state": 1,
        }
        assert renamed.after == {
            "id": 2,
            "user_name": "bob",
            "nickname": "B",
            "mail": "b@x",
            "state": 1,
        }

        # A longer VARCHAR switches to a 2-byte length prefix; a new first column shifts all.
        env.sql("ALTER TABLE users MODIFY nickname VARCHAR(300) NOT NULL")
        env.sql("ALTER TABLE users ADD COLUMN tag CHAR(3) NOT NULL DEFAULT 'new' FIRST")
        env.sql("UPDATE users SET nickname = REPEAT('n', 280) WHERE id = 1")
        (wide,) = _drain(source, 1)
        assert wide.after == {
            "tag": "new", "id": 1, "user_name": "alice", "nickname": "n" * 280, "mail": "a@x", "state": 0,
        }  # fmt: skip


def test_reconnects_after_the_stream_is_killed(binlog_env: BinlogEnv) -> None:
    env = binlog_env
    start = _start(env)
    env.sql(
        "INSERT INTO users VALUES "
        + ", ".join(f"({i}, 'u{i}', 'n', NULL, 0)" for i in range(1, 301))
    )
    with _source(env, start) as source:
        got = source.poll(120, 5.0)
        assert len(got) == 120
        thread_id = source._conn.thread_id()  # the dump connection, killed from outside
        env.sql(f"KILL {int(thread_id)}")
        env.sql("UPDATE users SET nickname = 'm' WHERE id BETWEEN 1 AND 100")
        got += _drain(source, 180 + 100)
    assert [c.after["id"] for c in got[:300] if c.after] == list(range(1, 301))
    assert len({c.position for c in got}) == 400


def test_a_silent_dead_connection_is_noticed_and_replaced(binlog_env: BinlogEnv) -> None:
    """No FIN, no RST, no byte: without heartbeats the reader would wait forever."""
    env = binlog_env
    proxy = FreezableProxy(env.sidecar_params["port"])
    params = {**env.sidecar_params, "port": proxy.port}
    policy = ReconnectPolicy(backoff=Backoff(0.05, 0.2), heartbeat=0.5, read_timeout=2.0)
    start = _start(env)
    try:
        with BinlogSource(
            params, env.registry(), server_id=next_server_id(), start=start, policy=policy
        ) as source:
            env.sql("INSERT INTO users VALUES (1, 'a', 'a', NULL, 0)")
            got = _drain(source, 1)
            proxy.freeze_existing()
            env.sql("INSERT INTO users VALUES (2, 'b', 'b', NULL, 0), (3, 'c', 'c', NULL, 0)")
            frozen_at = time.monotonic()
            got += _drain(source, 2, timeout=30)
            assert time.monotonic() - frozen_at < 15
        assert proxy.connections >= 2, "the reader must have reconnected"
        assert [c.after["id"] for c in got if c.after] == [1, 2, 3]
    finally:
        proxy.close()


def test_mariadb_uuid_columns_arrive_as_uuid_text(binlog_env: BinlogEnv) -> None:
    """MariaDB's UUID type is 16 bytes in the binlog (trailing zeros cut); SQL shows text."""
    import uuid

    from cachesync import Sync, resolve

    env = binlog_env
    env.sql("CREATE TABLE tokens (id INT PRIMARY KEY, token UUID, raw BINARY(16))")
    registry = Registry()
    registry.add(
        resolve(
            "Token",
            Sync(keys=["token:{token}"]),
            table="tokens",
            columns={"id": "id", "token": "token", "raw": "raw"},
            primary_key=["id"],
            schema=env.schema,
        )
    )
    values = [
        uuid.uuid4(),
        uuid.uuid1(),
        uuid.UUID("00112233-4455-4677-8899-aabbcc000000"),  # trailing zero bytes
    ]
    start = _start(env)
    for i, value in enumerate(values):
        env.sql(f"INSERT INTO tokens VALUES ({i}, '{value}', UNHEX('00ff'))")
    with _source(env, start, registry) as source:
        changes = _drain(source, len(values))
    assert [c.after["token"] for c in changes] == [str(v) for v in values]  # type: ignore[index]
    assert all(isinstance(c.after["raw"], bytes) for c in changes)  # type: ignore[index]
