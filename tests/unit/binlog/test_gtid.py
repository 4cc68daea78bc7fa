"""GTID states (MariaDB and MySQL notations), GTID positions and resume points, multi-host URLs.

MySQL's notation is checked against the examples of the MySQL manual
("GTID Format and Storage") and python-mysql-replication's GtidSet tests, as
no MySQL server runs here.
"""

from __future__ import annotations

import pytest

from cachesync.binlog.checkpoint import ResumePoint
from cachesync.binlog.gtid import MariaDBGtidState, MySQLGtidState, parse_state
from cachesync.changes import BinlogPosition, GtidPosition, Position
from cachesync.connections import mysql_hosts
from cachesync.errors import ConfigurationError, DecodeError

UUID = "3e11fa47-71ca-11e1-9e33-c80aa9429562"
UUID2 = "57b70f4e-20d3-11e5-a393-4a63946f7eac"


def test_mariadb_state_contains_adds_and_weighs() -> None:
    state = MariaDBGtidState.parse("1-2-5,0-1-12")
    assert state.encode() == "0-1-12,1-2-5"
    assert state.contains("0-1-12") and state.contains("0-9-3") and not state.contains("0-1-13")
    assert not state.contains("2-1-1")
    later = state.add("0-8-13")
    assert later.encode() == "0-8-13,1-2-5" and later.weight == state.weight + 1
    assert later.covers(state) and not state.covers(later)
    assert MariaDBGtidState.parse("").weight == 0 and MariaDBGtidState.parse("").encode() == ""
    assert parse_state("mariadb", "0-1-12") == MariaDBGtidState.parse("0-1-12")
    for bad in ("0-1", "a-b-c", "0-1-2,0-1-3"):
        with pytest.raises(DecodeError):
            MariaDBGtidState.parse(bad)


def test_mysql_gtid_sets_as_the_manual_writes_them() -> None:
    state = MySQLGtidState.parse(f"{UUID}:1-5:7,\n{UUID2}:1-3")
    assert state.encode() == f"{UUID}:1-5:7,{UUID2}:1-3"
    assert state.weight == 9
    assert state.contains(f"{UUID}:7") and not state.contains(f"{UUID}:6")
    filled = state.add(f"{UUID}:6")
    assert filled.encode() == f"{UUID}:1-7,{UUID2}:1-3" and filled.weight == 10
    assert filled.covers(state) and not state.covers(filled)
    assert MySQLGtidState.parse(UUID.upper() + ":1-2").encode() == f"{UUID}:1-2"
    assert not state.covers(MariaDBGtidState.parse("0-1-1"))
    for bad in ("nope:1", f"{UUID}:5-3", f"{UUID}:0"):
        with pytest.raises(DecodeError):
            MySQLGtidState.parse(bad)


def test_gtid_positions_order_and_versions_above_file_versions() -> None:
    a, b, c = (
        GtidPosition("0-1-5", 5, 0, 9),
        GtidPosition("0-1-5", 5, 1, 0),
        GtidPosition("0-1-6", 6),
    )
    assert a < b < c and a.version < b.version < c.version
    assert a.version >= 1 << 62 > BinlogPosition("mysql-bin.262143", 2**32 - 1, 4095).version
    assert Position.decode(a.encode()) == a
    mysql = GtidPosition(f"{UUID}:12", 40, 2, 3)
    assert Position.decode(mysql.encode()) == mysql
    assert Position.decode("gtid::7:0:1") == GtidPosition("", 7, 0, 1)  # reindex's position
    with pytest.raises(DecodeError):
        Position.decode(f"gtid:0-1-1:{1 << 41}:0:0")  # no valid Elasticsearch version


def test_resume_points_round_trip_and_old_checkpoints_still_decode() -> None:
    old = "binlog:mysql-bin.000003:1200+1500.4@mysql-bin.000002:88"
    point = ResumePoint.decode(old)
    assert point.gtid is None and point.encode() == old
    state = MariaDBGtidState.parse("0-1-40")
    gtid = ResumePoint(
        "replica-bin.000001", 900, GtidPosition("0-1-41", 41, 3, 7), None,
        ("replica-bin.000001", 300), state, MariaDBGtidState.parse("0-1-30"),
    )  # fmt: skip
    text = gtid.encode()
    assert text == (
        "binlog:replica-bin.000001:900@replica-bin.000001:300;mariadb=0-1-40;"
        "handled=0-1-41/3.7;hold=0-1-30"
    )
    assert ResumePoint.decode(text) == gtid
    assert gtid.already_handled(GtidPosition("0-1-41", 41, 3, 7))
    assert not gtid.already_handled(GtidPosition("0-1-41", 41, 3, 8))
    assert gtid.already_handled(GtidPosition("0-2-39", 39, 9, 9))  # in the state
    assert not gtid.already_handled(GtidPosition("1-1-1", 41, 0, 0))
    mysql = ResumePoint("binlog.000007", 4, None, gtid=MySQLGtidState.parse(f"{UUID}:1-9"))
    assert ResumePoint.decode(mysql.encode()) == mysql
    for bad in (old + ";mariadb=x", old + ";oops", "binlog:f.1:4;handled=0-1-1/0.0"):
        with pytest.raises(DecodeError):
            ResumePoint.decode(bad)


def test_a_url_may_name_several_servers() -> None:
    hosts = mysql_hosts("mysql://u:p%2Fw@db1:3306,db2:3307,[::1]/shop")
    assert [(h["host"], h["port"]) for h in hosts] == [("db1", 3306), ("db2", 3307), ("::1", 3306)]
    assert all(
        h["user"] == "u" and h["password"] == "p/w" and h["database"] == "shop" for h in hosts
    )
    with pytest.raises(ConfigurationError, match="db2:x"):
        mysql_hosts("mysql://u@db1,db2:x/shop")
