"""GTID positions on the private MariaDB: exact resume inside transactions, upgrade of old checkpoints."""

from __future__ import annotations

import pymysql
import pytest

from cachesync.binlog import BinlogSource, ResumePoint
from cachesync.binlog.checkpoint import TableCheckpointStore
from cachesync.binlog.gtid import parse_state
from cachesync.binlog.positions import current_position, first_point, upgrade
from cachesync.changes import BinlogPosition, GtidPosition, RowChange
from cachesync.errors import ConfigurationError
from tests.integration.binlog.harness import BinlogEnv, next_server_id
from tests.integration.binlog.test_source import FAST_RECONNECT, _drain
from tests.integration.binlog.test_xa import XA, _xid, xa

__all__ = ["xa"]  # the fixture, imported for pytest

pytestmark = pytest.mark.services


def _source(env: BinlogEnv, start: ResumePoint) -> BinlogSource:
    return BinlogSource(
        env.sidecar_params,
        env.registry(),
        server_id=next_server_id(),
        start=start,
        policy=FAST_RECONNECT,
    )


def _conn(env: BinlogEnv) -> pymysql.connections.Connection:  # type: ignore[type-arg]
    return pymysql.connect(**env.sidecar_params, autocommit=True)


def _ids(changes: list[RowChange]) -> list[int]:
    return [int((c.after or c.before or {})["id"]) for c in changes]


def _take(source: BinlogSource, count: int) -> list[RowChange]:
    """Exactly *count* changes (more may be waiting)."""
    out: list[RowChange] = []
    while len(out) < count:
        more = source.poll(count - len(out), 5.0)
        assert more, f"stream ended after {len(out)} rows"
        out += more
    return out


def _write(env: BinlogEnv, first: int, count: int, per_statement: int = 10) -> None:
    """One transaction inserting ids first.. in several statements (several rows events)."""
    env.transaction(
        [
            "INSERT INTO users VALUES "
            + ", ".join(f"({i}, 'u{i}', 'n{i}', NULL, 0)" for i in range(a, a + per_statement))
            for a in range(first, first + count, per_statement)
        ]
    )


def test_resume_inside_a_transaction_is_exact_with_gtid_positions(binlog_env: BinlogEnv) -> None:
    env = binlog_env
    conn = _conn(env)
    start = first_point(conn, 0.0)
    conn.close()
    assert start.gtid is not None and start.gtid.flavour == "mariadb"
    _write(env, 1, 60)  # 6 statements: 6 rows events in one transaction
    env.sql("CREATE TABLE other (id INT PRIMARY KEY)")
    env.transaction(
        ["INSERT INTO other VALUES (1)", "INSERT INTO users VALUES (61, 'u', 'n', NULL, 0)"]
    )
    _write(env, 100, 20)
    seen: list[int] = []
    point = start
    # Stop at awkward places: inside a rows event, at an event boundary, across transactions.
    for take in (7, 13, 10, 31, 5, 15):
        with _source(env, point) as source:
            chunk = _take(source, take)
            point = ResumePoint.decode(source.resume_point.encode())
        assert all(isinstance(c.position, GtidPosition) for c in chunk)
        seen += _ids(chunk)
    with _source(env, point) as source:
        seen += _ids(_drain(source, 0))
    assert seen == [*range(1, 62), *range(100, 120)]


def test_a_file_position_checkpoint_is_upgraded_without_a_lost_or_repeated_row(
    binlog_env: BinlogEnv,
) -> None:
    env = binlog_env
    file, pos = env.master_status()
    old = ResumePoint(file, pos)  # what the previous version started from and saved
    _write(env, 1, 40)
    _write(env, 41, 40)
    with _source(env, old) as source:  # the previous version: file+position only
        changes = _take(source, 25)
        saved = source.resume_point.encode()
    assert all(isinstance(c.position, BinlogPosition) for c in changes)
    assert ";" not in saved and "+" in saved, saved  # inside the first transaction
    conn = _conn(env)
    try:
        upgraded = upgrade(conn, ResumePoint.decode(saved), "test")
    finally:
        conn.close()
    assert upgraded.gtid is not None and isinstance(upgraded.handled, BinlogPosition)
    text = upgraded.encode()
    assert text.startswith(saved + ";mariadb="), text
    with _source(env, ResumePoint.decode(text)) as source:
        rest = _drain(source, 55)
        after = source.resume_point
    assert _ids(changes) + _ids(rest) == list(range(1, 81))
    # The rest of the old transaction keeps offsets' order; the next one is GTID-positioned.
    assert isinstance(rest[-1].position, GtidPosition)
    assert rest[-1].position.version > max(c.position.version for c in changes)  # type: ignore[union-attr]
    assert after.gtid is not None and after.handled is None
    env.sql("INSERT INTO users VALUES (500, 'u', 'n', NULL, 0)")
    with _source(env, after) as source:
        assert _ids(_drain(source, 1)) == [500]


def test_versions_grow_with_the_gtid_state_and_reindex_writes_below_later_changes(
    binlog_env: BinlogEnv,
) -> None:
    env = binlog_env
    conn = _conn(env)
    try:
        start = first_point(conn, 0.0)
        at = current_position(conn)
    finally:
        conn.close()
    assert isinstance(at, GtidPosition) and at.version >= 1 << 62
    _write(env, 1, 10, per_statement=5)
    env.sql("UPDATE users SET nickname = 'x' WHERE id = 3")
    with _source(env, start) as source:
        changes = _drain(source, 11)
    versions = [c.position.version for c in changes]  # type: ignore[union-attr]
    assert versions == sorted(set(versions)) and versions[0] > at.version
    # Every file+position version of this server is smaller (the upgrade keeps indexes valid).
    file, pos = env.master_status()
    assert BinlogPosition(file, pos, 4095).version < versions[0]


def test_a_checkpoint_too_long_for_the_table_is_refused_until_the_column_is_widened(
    binlog_env: BinlogEnv,
) -> None:
    """MySQL GTID sets naming many server UUIDs outgrow VARCHAR(255): said, not truncated."""
    env = binlog_env
    state = ",".join(f"{i:08x}-0000-4000-8000-000000000000:1-99999" for i in range(8))
    text = ResumePoint("binlog.000001", 4, gtid=parse_state("mysql", state)).encode()
    assert len(text) > 255
    store = TableCheckpointStore(env.root)
    try:
        with pytest.raises(ConfigurationError, match="ALTER TABLE cachesync_checkpoint MODIFY"):
            store.save("long", text)
        env.sql("ALTER TABLE cachesync_checkpoint MODIFY position VARCHAR(4096) NOT NULL")
        store.close()
        store = TableCheckpointStore(env.root)
        store.save("long", text)
        stored = store.load("long")
        assert stored is not None and ResumePoint.decode(stored.position).encode() == text
    finally:
        store.close()


def test_held_xa_rows_resume_inside_the_commit_with_gtid_positions(
    binlog_env: BinlogEnv, xa: XA
) -> None:
    """The hold is a GTID state too: a restart half-way through an XA COMMIT's rows."""
    env = binlog_env
    conn = _conn(env)
    start = first_point(conn, 0.0)
    conn.close()
    xid = _xid(env, "gtid")
    xa.prepare(
        xid,
        ["INSERT INTO users VALUES (3, 'carol', 'C', NULL, 0)",
         "INSERT INTO users VALUES (5, 'eve', 'E', NULL, 0)"],
    )  # fmt: skip
    env.sql("INSERT INTO users VALUES (4, 'dan', 'D', NULL, 0)")
    xa.commit(xid)
    with _source(env, start) as first:
        plain = _take(first, 1)
        held = _take(first, 1)
        middle = ResumePoint.decode(first.resume_point.encode())
    assert middle.hold_gtid is not None and isinstance(middle.handled, GtidPosition)
    with _source(env, middle) as second:
        rest = _drain(second, 1)
        assert second.held == 0 and second.resume_point.hold is None
    assert _ids(plain + held + rest) == [4, 3, 5]
    positions = [c.position for c in plain + held + rest]
    assert all(isinstance(p, GtidPosition) for p in positions)
    assert [p.version for p in positions] == sorted({p.version for p in positions})  # type: ignore[union-attr]
