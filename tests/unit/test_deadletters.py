"""Poison changes: lossless encoding of any row image, what counts as poison, salvaged keys."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from cachesync import BinlogPosition, DeleteKeys, Op, RowChange, SchemaError, TransientError
from cachesync.deadletters import (
    PoisonChange,
    decode_change,
    encode_change,
    is_poison,
    salvage_keys,
)
from cachesync.errors import ConfigurationError, HandOffError, PermanentError
from tests.unit.models import user_spec

values = st.one_of(
    st.none(),
    st.integers(),
    st.text(),
    st.binary(max_size=20),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.datetimes(),
    st.dates(),
    st.times(),
    st.timedeltas(min_value=dt.timedelta(hours=-838), max_value=dt.timedelta(hours=838)),
    st.uuids(),
    st.frozensets(st.text(max_size=5), max_size=4),
    st.floats(allow_nan=False),
)
images = st.dictionaries(st.text(min_size=1, max_size=10), values, max_size=6)


@given(images, images)
def test_any_row_image_survives_encoding(before: dict[str, Any], after: dict[str, Any]) -> None:
    change = RowChange(
        Op.UPDATE, "db", "t", before, after, BinlogPosition("mysql-bin.000002", 77, 3)
    )
    back = decode_change(encode_change(change))
    assert back.before == {
        k: (set(v) if isinstance(v, frozenset) else v) for k, v in before.items()
    }
    assert back.after is not None and back.position == change.position and back.op is Op.UPDATE
    assert (back.schema, back.table) == ("db", "t")


def test_binary_values_are_encoded_safely_and_named_in_context() -> None:
    image = {"id": 7, "code": b"\xff\xfe", "price": Decimal("1.50"), "at": dt.datetime(2026, 1, 2)}
    change = RowChange(Op.INSERT, "db", "users", None, image, BinlogPosition("mysql-bin.000001", 9))
    letter = PoisonChange.of(change, "app.User", ["id"], ZeroDivisionError("boom"))
    body = letter.encode()
    assert body["change"]["after"]["code"] == {"$bytes": "//4="}
    assert body["primary_key"] == {"id": 7} and body["error"] == "ZeroDivisionError: boom"
    assert "app.User" in letter.describe() and "users" in letter.describe()
    assert decode_change(body["change"]).after == image
    assert (
        uuid.UUID(int=1)
        == decode_change(
            encode_change(RowChange(Op.INSERT, None, "t", None, {"u": uuid.UUID(int=1)}))
        ).after["u"]
    )  # type: ignore[index]


def test_only_row_local_errors_are_poison() -> None:
    assert (
        is_poison(ZeroDivisionError())
        and is_poison(PermanentError("x"))
        and is_poison(ValueError())
    )
    for pipeline in (
        SchemaError("x"),
        ConfigurationError("x"),
        TransientError("x"),
        HandOffError("x"),
    ):
        assert not is_poison(pipeline)
    assert not is_poison(KeyboardInterrupt())


def test_a_poison_change_still_deletes_the_keys_its_templates_render() -> None:
    spec = user_spec()
    before = {"id": 1, "user_name": "ann", "nickname": "a", "email": None, "state": 0}
    after = {**before, "user_name": "bob"}
    change = RowChange(
        Op.UPDATE, "db", "users", before, after, BinlogPosition("mysql-bin.000001", 5)
    )
    (action,) = salvage_keys(change, spec)
    assert isinstance(action, DeleteKeys)
    assert set(action.keys) == {"user:1", "user:by-name:ann", "user:by-name:bob"}
