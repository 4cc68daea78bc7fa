from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachesync import BinlogPosition, DecodeError, DeleteDoc, DeleteKeys, IndexDoc, OutboxPosition
from cachesync.actions import RowRef
from cachesync.changes import Position
from cachesync.codec import decode_action, decode_actions, encode_action, encode_actions

positions = st.builds(
    BinlogPosition,
    st.integers(min_value=1, max_value=2**19 - 1).map(lambda i: f"mysql-bin.{i:06d}"),
    st.integers(min_value=4, max_value=2**32 - 1),
    st.integers(min_value=0, max_value=4095),
)


@given(a=positions, b=positions)
def test_version_order_equals_position_order(a: BinlogPosition, b: BinlogPosition) -> None:
    assert (a < b) == (a.version < b.version)
    assert 0 < a.version < 2**63


@given(p=positions)
def test_position_round_trips_through_text(p: BinlogPosition) -> None:
    assert Position.decode(p.encode()) == p


def test_outbox_positions_and_bad_text() -> None:
    assert Position.decode(OutboxPosition(12, 3).encode()) == OutboxPosition(12, 3)
    assert OutboxPosition(1).version < OutboxPosition(2).version
    with pytest.raises(DecodeError):
        Position.decode("gtid:0-1-5")


pk_values = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**64 - 1),  # what a BIGINT [UNSIGNED] holds
    st.text(),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.datetimes(),
    st.dates(),
    st.binary(max_size=8),
)
actions = st.one_of(
    st.builds(
        DeleteKeys,
        st.lists(st.text(min_size=1), min_size=1).map(tuple),
        st.one_of(st.none(), positions),
    ),
    st.builds(
        IndexDoc,
        st.just("users"),
        st.text(min_size=1),
        st.dictionaries(st.text(), st.one_of(st.integers(), st.text())),
        positions,
        st.builds(
            RowRef,
            st.just("db"),
            st.just("users"),
            st.dictionaries(st.just("id"), pk_values, min_size=1),
        ),
    ),
    st.builds(DeleteDoc, st.just("users"), st.text(min_size=1), positions, st.none()),
)


@given(st.lists(actions, max_size=5))
def test_actions_round_trip_through_json(items: list[object]) -> None:
    assert decode_actions(encode_actions(items)) == items  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [
        {"v": 2, "type": "delete_keys", "keys": ["a"]},
        {"v": 1, "type": "delete_keys", "keys": "a"},
        {"v": 1, "type": "index_doc", "index": "i", "id": "1", "document": {}, "position": None},
        {"v": 1, "type": "teleport"},
        {"v": 1, "type": "delete_doc", "index": "i", "id": "1", "position": "binlog:x"},
    ],
)
def test_malformed_actions_raise_decode_error(bad: dict[str, object]) -> None:
    with pytest.raises(DecodeError):
        decode_action(bad)


def test_tagged_primary_keys() -> None:
    ref = RowRef("db", "t", {"a": Decimal("1.5"), "b": dt.date(2020, 1, 2), "c": b"\x00"})
    action = DeleteDoc("i", "1", BinlogPosition("mysql-bin.000001", 10), ref)
    assert decode_action(encode_action(action)) == action
    with pytest.raises(DecodeError):
        decode_actions("{not json")


def test_positions_beyond_the_version_space_refuse_loudly() -> None:
    with pytest.raises(OverflowError):
        _ = BinlogPosition("mysql-bin.524288", 4).version
    with pytest.raises(OverflowError):
        _ = BinlogPosition("mysql-bin.000001", 2**32).version
