"""XA transactions through the real sidecar: rows of a PREPARE wait for their COMMIT.

A prepared XA transaction keeps its row locks, and a rolled-back one must never
reach Redis or Elasticsearch: these tests seed the cache keys first and compare
the index with the table after each phase. Every xid is unique per test and
rolled back at tear-down if a failing test left it prepared (a prepared
transaction survives its connection and would block ``DROP DATABASE``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator

import pytest

from cachesync.binlog import BinlogSource, ResumePoint
from cachesync.binlog.xa import Xid
from cachesync.changes import BinlogPosition, Op
from cachesync.policies import XaHoldPolicy
from tests.integration.binlog.harness import BinlogEnv, SidecarProcess, next_server_id, running

pytestmark = pytest.mark.services


class XA:
    """Runs XA transactions as root; the first phase on a connection closed after PREPARE
    (the commit then comes from another session, as a transaction manager does)."""

    def __init__(self, env: BinlogEnv) -> None:
        self.env = env
        self.prepared: set[str] = set()

    def prepare(self, xid: str, statements: list[str]) -> None:
        conn = self.env.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f"XA START {xid}")
                for statement in statements:
                    cur.execute(statement)
                cur.execute(f"XA END {xid}")
                cur.execute(f"XA PREPARE {xid}")
            self.prepared.add(xid)
        finally:
            conn.close()

    def commit(self, xid: str) -> None:
        self.env.sql(f"XA COMMIT {xid}")
        self.prepared.discard(xid)

    def rollback(self, xid: str) -> None:
        self.env.sql(f"XA ROLLBACK {xid}")
        self.prepared.discard(xid)


@pytest.fixture
def xa(binlog_env: BinlogEnv) -> Iterator[XA]:
    runner = XA(binlog_env)
    try:
        yield runner
    finally:
        for xid in list(runner.prepared):
            with contextlib.suppress(Exception):
                runner.rollback(xid)


def _seed(env: BinlogEnv) -> None:
    env.sql(
        "INSERT INTO users VALUES (1, 'alice', 'Al', 'a@example.com', 0), "
        "(2, 'bob', 'Bo', 'b@example.com', 0)"
    )


def _xid(env: BinlogEnv, name: str) -> str:
    return f"'{env.schema}-{name}'"


RENAME_AND_INSERT = [
    "UPDATE users SET user_name = 'alicia', nickname = 'Ali' WHERE id = 1",
    "INSERT INTO users VALUES (3, 'carol', 'Ca', NULL, 0)",
]


def test_prepare_then_rollback_reaches_neither_redis_nor_elasticsearch(
    binlog_env: BinlogEnv, xa: XA
) -> None:
    env = binlog_env
    with running(env.sidecar()):
        _seed(env)
        env.sync_point()
        keys = env.keys(1, "alice") + env.keys(1, "alicia") + env.keys(3, "carol")
        env.set_keys(keys)
        xid = _xid(env, "rb")
        xa.prepare(xid, RENAME_AND_INSERT)
        env.sync_point()  # the PREPARE was read: nothing of it is applied
        assert env.existing(keys) == keys
        env.assert_index_matches_table()
        xa.rollback(xid)
        env.sync_point()
        assert env.existing(keys) == keys, "a rolled-back XA transaction deleted keys"
        assert env.documents()["1"]["username"] == "alice"
        assert "3" not in env.documents()
        env.assert_index_matches_table()


def test_prepare_then_commit_with_an_ordinary_transaction_in_between(
    binlog_env: BinlogEnv, xa: XA
) -> None:
    env = binlog_env
    with running(env.sidecar()):
        _seed(env)
        env.sync_point()
        xa_keys = env.keys(1, "alice") + env.keys(1, "alicia") + env.keys(3, "carol")
        plain_keys = env.keys(2, "bob") + env.keys(2, "robert")
        env.set_keys(xa_keys + plain_keys)
        xid = _xid(env, "c")
        xa.prepare(xid, RENAME_AND_INSERT)
        env.transaction(["UPDATE users SET user_name = 'robert' WHERE id = 2"])
        env.sync_point()
        assert env.existing(plain_keys) == [], "the ordinary transaction waits for nothing"
        assert env.existing(xa_keys) == xa_keys
        assert env.documents()["2"]["username"] == "robert"
        env.assert_index_matches_table()  # the prepared rows are not visible yet

        xa.commit(xid)
        env.sync_point()
        assert env.existing(xa_keys) == []
        assert env.documents()["1"]["username"] == "alicia"
        env.assert_index_matches_table()

        # Later changes of the same rows win over the XA transaction's (versions).
        env.sql("UPDATE users SET nickname = 'Later' WHERE id IN (1, 3)")
        env.sync_point()
        env.assert_index_matches_table()


def test_commit_one_phase_is_an_ordinary_commit(binlog_env: BinlogEnv) -> None:
    env = binlog_env
    with running(env.sidecar()):
        _seed(env)
        env.sync_point()
        keys = env.keys(1, "alice") + env.keys(1, "alicia")
        env.set_keys(keys)
        xid = _xid(env, "1p")
        conn = env.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f"XA START {xid}")
                cur.execute(RENAME_AND_INSERT[0])
                cur.execute(f"XA END {xid}")
                cur.execute(f"XA COMMIT {xid} ONE PHASE")
        finally:
            conn.close()
        env.sync_point()
        assert env.existing(keys) == []
        env.assert_index_matches_table()


def _saved(env: BinlogEnv) -> ResumePoint:
    data = json.loads((env.tmp / "checkpoint.json").read_text())
    return ResumePoint.decode(data[env.schema]["position"])


def test_prepared_across_sidecar_restarts_then_committed_while_down(
    binlog_env: BinlogEnv, xa: XA
) -> None:
    env = binlog_env
    keys = env.keys(1, "alice") + env.keys(1, "alicia") + env.keys(3, "carol")
    plain_keys = env.keys(2, "bob") + env.keys(2, "bobby")
    xid = _xid(env, "restart")
    with running(env.sidecar()):
        _seed(env)
        env.sync_point()
        env.set_keys(keys)
        xa.prepare(xid, RENAME_AND_INSERT)
        env.sql("UPDATE users SET nickname = 'B1' WHERE id = 2")
        env.sync_point()
    saved = _saved(env)
    assert saved.hold is not None, f"the checkpoint {saved} passed a held PREPARE"

    # Restart while it stays prepared: the new sidecar re-holds it, applies nothing twice.
    with running(env.sidecar()):
        env.sync_point()
        env.set_keys(plain_keys)
        env.sql("UPDATE users SET user_name = 'bobby' WHERE id = 2")
        env.sync_point()
        assert env.existing(plain_keys) == []
        assert env.existing(keys) == keys
        env.assert_index_matches_table()
    assert _saved(env).hold == saved.hold

    xa.commit(xid)  # while no sidecar runs
    with running(env.sidecar()):
        env.sync_point()
        assert env.existing(keys) == [], "rows of an XA COMMIT made while down were lost"
        env.assert_index_matches_table()
    assert _saved(env).hold is None


def test_sigkill_between_prepare_and_commit(binlog_env: BinlogEnv, xa: XA) -> None:
    """A real ``cachesync listen`` killed with SIGKILL while a binary xid is prepared."""
    env = binlog_env
    sidecar = SidecarProcess(env.settings_env(), env.tmp / "listen.log").start()
    sidecar.wait_for_log("streaming binlog from")
    _seed(env)
    env.sync_point()
    keys = env.keys(1, "alice") + env.keys(1, "alicia") + env.keys(3, "carol")
    env.set_keys(keys)
    xid = f"X'{env.schema.encode().hex()}ff',X'01',42"  # binary gtrid, bqual and a formatID
    xa.prepare(xid, RENAME_AND_INSERT)
    for n in range(20):
        env.sql("UPDATE users SET nickname = %s WHERE id = 2", (f"n{n}",))
    env.sync_point()
    # The checkpoint follows the applied changes within checkpoint_interval: kill once it
    # has saved past the sentinel, holding the prepared transaction.
    file, pos = env.master_status()
    deadline = time.monotonic() + 30
    while (saved := _saved(env)).hold is None or (saved.file, saved.pos) < (file, pos):
        assert time.monotonic() < deadline, f"the checkpoint stayed at {saved}"
        time.sleep(0.05)
    sidecar.kill()
    assert env.existing(keys) == keys
    xa.commit(xid)
    sidecar.start()
    sidecar.wait_for_log("streaming binlog from", occurrences=2)
    env.sync_point()
    assert env.existing(keys) == []
    env.assert_index_matches_table()
    assert "caught up to" in sidecar.output()
    assert "NOT applied" not in sidecar.output()


def test_source_positions_held_rows_at_the_commit_and_resumes_inside_it(
    binlog_env: BinlogEnv, xa: XA
) -> None:
    """What BinlogSource returns: nothing at PREPARE, the rows at COMMIT, at its position;
    a resume point taken half-way through them still holds the PREPARE."""
    env = binlog_env
    file, pos = env.master_status()
    xid = _xid(env, "src")
    xa.prepare(
        xid,
        ["INSERT INTO users VALUES (3, 'carol', 'C', NULL, 0)",
         "INSERT INTO users VALUES (5, 'eve', 'E', NULL, 0)"],
    )  # fmt: skip
    env.sql("INSERT INTO users VALUES (4, 'dan', 'D', NULL, 0)")
    xa.commit(xid)

    def source(start: ResumePoint) -> BinlogSource:
        return BinlogSource(
            env.sidecar_params, env.registry(), server_id=next_server_id(), start=start
        )

    with source(ResumePoint(file, pos)) as first:
        plain = first.poll(1, 2.0)
        held = first.poll(1, 2.0)
        middle = first.resume_point
    assert [c.after and c.after["id"] for c in plain + held] == [4, 3]
    assert middle.hold is not None and middle.handled is not None
    with source(middle) as second:
        rest = second.poll(10, 2.0) + second.poll(10, 0.5)
        assert second.held == 0 and second.resume_point.hold is None
    assert [(c.op, c.after and c.after["id"]) for c in rest] == [(Op.INSERT, 5)]
    positions = [c.position for c in plain + held + rest]
    assert all(isinstance(p, BinlogPosition) for p in positions)
    assert positions == sorted(positions)  # type: ignore[type-var]
    assert [p.row for p in positions[1:]] == [0, 1]  # type: ignore[union-attr]


def test_commit_of_a_transaction_prepared_before_the_start_is_named(
    binlog_env: BinlogEnv, xa: XA, caplog: pytest.LogCaptureFixture
) -> None:
    env = binlog_env
    xa.prepare(_xid(env, "early"), RENAME_AND_INSERT[1:])
    file, pos = env.master_status()
    xa.commit(_xid(env, "early"))
    env.sql("INSERT INTO users VALUES (4, 'dan', 'D', NULL, 0)")
    source = BinlogSource(
        env.sidecar_params, env.registry(), server_id=next_server_id(), start=ResumePoint(file, pos)
    )
    with caplog.at_level(logging.ERROR, "cachesync.binlog"), source:
        changes = source.poll(10, 2.0)
    assert [c.after and c.after["id"] for c in changes] == [4]
    name = str(Xid(1, f"{env.schema}-early".encode()))
    assert any(name in r.getMessage() and "NOT applied" in r.getMessage() for r in caplog.records)


def test_the_xa_hold_policy_bounds_what_the_source_holds(
    binlog_env: BinlogEnv, xa: XA, caplog: pytest.LogCaptureFixture
) -> None:
    """``max_prepared=1``: a second PREPARE evicts the first, whose COMMIT is then named
    and not applied; with the default bounds both transactions' rows come out."""
    env = binlog_env
    file, pos = env.master_status()
    first, second = _xid(env, "bound1"), _xid(env, "bound2")
    xa.prepare(first, ["INSERT INTO users VALUES (3, 'carol', 'C', NULL, 0)"])
    xa.prepare(second, ["INSERT INTO users VALUES (5, 'eve', 'E', NULL, 0)"])
    xa.commit(first)
    xa.commit(second)

    def ids(policy: XaHoldPolicy | None) -> list[object]:
        source = BinlogSource(
            env.sidecar_params,
            env.registry(),
            server_id=next_server_id(),
            start=ResumePoint(file, pos),
            xa=policy,
        )
        with source:
            changes = source.poll(10, 2.0) + source.poll(10, 0.5)
        return [c.after and c.after["id"] for c in changes]

    assert ids(None) == [3, 5]
    with caplog.at_level(logging.ERROR, "cachesync.binlog"):
        assert ids(XaHoldPolicy(max_prepared=1)) == [5]
    name = str(Xid(1, f"{env.schema}-bound1".encode()))
    assert any(
        name in r.getMessage() and "dropped from memory" in r.getMessage() for r in caplog.records
    )
