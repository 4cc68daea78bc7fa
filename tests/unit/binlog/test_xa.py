"""Pure parts of the XA support: xid parsing, resume points with a hold, the bounded store."""

from __future__ import annotations

import logging
import struct

import pytest

from cachesync.binlog.checkpoint import ResumePoint
from cachesync.binlog.xa import (
    Group,
    HeldTransactions,
    Xid,
    gtid_starts_xa,
    parse_prepare,
    parse_query,
)
from cachesync.changes import BinlogPosition, Op, RowChange
from cachesync.errors import DecodeError


def _prepare_packet(xid: Xid, one_phase: bool = False) -> bytes:
    header = b"\x00" + struct.pack("<IBIIIH", 0, 0x26, 1, 0, 0, 0)
    body = struct.pack("<BiII", one_phase, xid.format_id, len(xid.gtrid), len(xid.bqual))
    return header + body + xid.gtrid + xid.bqual + b"\xde\xad\xbe\xef"


def test_prepare_event_and_queries_name_the_same_xid() -> None:
    xid = Xid(7, b"x2", b"b2")
    assert parse_prepare(_prepare_packet(xid)) == (xid, False)
    assert parse_prepare(_prepare_packet(xid, one_phase=True)) == (xid, True)
    # What MariaDB logs (hex, whatever the client typed) and what a client may type.
    assert parse_query("XA COMMIT X'7832',X'6232',7") == ("COMMIT", xid)
    assert parse_query("xa rollback 'x2','b2',7") == ("ROLLBACK", xid)
    assert parse_query("XA END X'7831',X'',1") == ("END", Xid(1, b"x1"))
    assert parse_query("XA BEGIN 'x1'") == ("START", Xid(1, b"x1"))
    assert parse_query("XA COMMIT 'x1' ONE PHASE") == ("COMMIT", Xid(1, b"x1"))
    assert parse_query("XA RECOVER") is None
    assert parse_query("UPDATE t SET a = 1") is None
    # gtrid/bqual boundaries matter: 'ab','c' is not 'a','bc'.
    assert parse_query("XA COMMIT 'ab','c'") != parse_query("XA COMMIT 'a','bc'")
    assert str(Xid(42, b"A\xff", b"\x01")) == "X'41ff',X'01',42"
    assert str(xid) == "'x2','b2',7"


def test_truncated_prepare_event_is_unreadable() -> None:
    with pytest.raises(ValueError):
        parse_prepare(_prepare_packet(Xid(1, b"abc"))[:-8])


def test_mariadb_gtid_flag() -> None:
    body = struct.pack("<QIB", 11, 0, 0x4C)
    header = b"\x00" + struct.pack("<IBIIIH", 0, 0xA2, 1, 0, 0, 0)
    assert gtid_starts_xa(header + body)
    assert not gtid_starts_xa(header + struct.pack("<QIB", 12, 0, 0x0C))


def test_resume_point_with_hold_round_trips_and_is_validated() -> None:
    point = ResumePoint("mysql-bin.000003", 900, BinlogPosition("mysql-bin.000003", 1000, 2), None,
                        ("mysql-bin.000002", 4000))  # fmt: skip
    assert point.encode() == "binlog:mysql-bin.000003:900+1000.2@mysql-bin.000002:4000"
    assert ResumePoint.decode(point.encode()) == point
    assert ResumePoint.decode("binlog:mysql-bin.000001:500").hold is None
    with pytest.raises(ValueError):
        ResumePoint("mysql-bin.000003", 900, hold=("mysql-bin.000003", 900))
    with pytest.raises(DecodeError):
        ResumePoint.decode("binlog:mysql-bin.000003:900@mysql-bin.000004:10")


def _rows(n: int) -> list[RowChange]:
    return [
        RowChange(Op.INSERT, "s", "t", None, {"id": i}, BinlogPosition("f.000001", 10, i))
        for i in range(n)
    ]


def test_held_transactions_are_bounded_and_evicted_oldest_first(
    caplog: pytest.LogCaptureFixture,
) -> None:
    held = HeldTransactions(max_rows=5, max_prepared=3)
    a, b, c = Xid(1, b"a"), Xid(1, b"b"), Xid(1, b"c")
    held.prepare(a, Group(("f.000001", 100), _rows(3), {"s.t"}), "f.000001:200")
    held.prepare(b, Group(("f.000001", 300), _rows(2)), "f.000001:400")
    assert held.oldest_start == ("f.000001", 100) and held.rows == 5
    with caplog.at_level(logging.ERROR, "cachesync.binlog"):
        held.prepare(c, Group(("f.000001", 500), _rows(1)), "f.000001:600")
        assert a not in held and held.oldest_start == ("f.000001", 300) and held.rows == 3
        assert "'a','',1" in caplog.text
        assert held.commit(a, "f.000001:700") is None  # evicted: named, not applied
        assert "NOT applied" in caplog.text and "s.t" in caplog.text
        assert held.commit(Xid(1, b"zz"), "f.000001:800") is None
    rows = held.commit(b, "f.000001:900")
    assert rows is not None and len(rows) == 2 and b in held  # held until resolved
    held.resolve(b)
    held.rollback(c, "f.000001:1000")
    assert len(held) == 0 and held.rows == 0 and held.oldest_start is None


def test_a_first_phase_too_large_to_hold_is_dropped() -> None:
    held = HeldTransactions(max_rows=2)
    group = Group(("f.000001", 100), _rows(3))
    held.check(group)
    assert group.dropped and group.rows == []
