from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachesync import (
    BinlogPosition,
    DeleteDoc,
    DeleteKeys,
    IndexDoc,
    Op,
    Projection,
    RowChange,
    SchemaError,
    Sync,
    plan,
    resolve,
)
from cachesync.planning import merge_key_deletes, plan_keys

from .models import USER_COLUMNS, user_spec

POS = BinlogPosition("mysql-bin.000002", 1234, 0)


def row(**values: Any) -> dict[str, Any]:
    base = {
        "id": 1,
        "user_name": "ann",
        "nickname": "A",
        "email": "a@x",
        "state": 0,
        "is_active": 1,
    }
    base.update(values)
    return base


def keys_of(actions: list[Any]) -> list[str]:
    return merge_key_deletes(actions)


def test_insert_deletes_keys_and_indexes_the_document() -> None:
    actions = plan(RowChange(Op.INSERT, "db", "users", None, row(), POS), user_spec())
    assert keys_of(actions) == ["user:1", "user:by-name:ann", "user:by-email:a@x"]
    (doc,) = [a for a in actions if isinstance(a, IndexDoc)]
    assert (doc.index, doc.doc_id, dict(doc.document)) == (
        "users",
        "1",
        {"username": "ann", "nickname": "A"},
    )
    assert doc.version == POS.version
    assert doc.source is not None and dict(doc.source.primary_key) == {"id": 1}


def test_rename_deletes_the_old_and_the_new_key() -> None:
    change = RowChange(Op.UPDATE, "db", "users", row(), row(user_name="bob"), POS)
    assert keys_of(plan(change, user_spec())) == [
        "user:1",
        "user:by-name:ann",
        "user:by-email:a@x",
        "user:by-name:bob",
    ]


def test_null_key_column_skips_that_key_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="cachesync.planning"):
        actions = plan(RowChange(Op.DELETE, "db", "users", row(email=None), None, POS), user_spec())
    assert keys_of(actions) == ["user:1", "user:by-name:ann"]
    assert "tests.User: key 'user:by-email:{email}' skipped, NULL in email" in caplog.text


def test_when_turning_false_deletes_the_document() -> None:
    change = RowChange(Op.UPDATE, "db", "users", row(state=0), row(state=1), POS)
    docs = [a for a in plan(change, user_spec()) if not isinstance(a, DeleteKeys)]
    assert docs == [DeleteDoc("users", "1", POS, docs[0].source)]


def test_when_turning_true_indexes_and_false_to_false_does_nothing() -> None:
    spec = user_spec()
    up = plan(RowChange(Op.UPDATE, "db", "users", row(state=1), row(state=0), POS), spec)
    assert [type(a) for a in up if not isinstance(a, DeleteKeys)] == [IndexDoc]
    none = plan(RowChange(Op.UPDATE, "db", "users", row(state=1), row(state=2), POS), spec)
    assert [a for a in none if not isinstance(a, DeleteKeys)] == []


def test_primary_key_change_moves_the_document() -> None:
    change = RowChange(Op.UPDATE, "db", "users", row(id=1), row(id=2), POS)
    docs = [a for a in plan(change, user_spec()) if not isinstance(a, DeleteKeys)]
    assert [(type(a).__name__, a.doc_id) for a in docs] == [("IndexDoc", "2"), ("DeleteDoc", "1")]
    assert dict(docs[1].source.primary_key) == {"id": 1}  # type: ignore[union-attr]


def test_without_position_only_keys_are_planned() -> None:
    actions = plan(RowChange(Op.INSERT, "db", "users", None, row()), user_spec())
    assert [type(a) for a in actions] == [DeleteKeys]


def test_invalidates_gets_attribute_rows() -> None:
    seen: list[tuple[Any, Any]] = []

    def invalidates(before: Any, after: Any) -> list[str]:
        seen.append((before, after))
        return ["users:list", f"users:count:{after['state']}"]

    spec = user_spec(invalidates=invalidates)
    actions = plan(RowChange(Op.INSERT, "db", "users", None, row()), spec)
    assert keys_of(actions)[-2:] == ["users:list", "users:count:0"]
    assert seen[0][0] is None and seen[0][1]["username"] == "ann"


def test_dropped_key_column_is_a_schema_error_naming_model_and_column() -> None:
    image = row()
    del image["user_name"]
    with pytest.raises(
        SchemaError, match="tests.User: key 'user:by-name:{username}' needs column\\(s\\) user_name"
    ):
        plan(RowChange(Op.INSERT, "db", "users", None, image, POS), user_spec())


# --- property: the ORM path and the binlog path render the same keys -------------------------

ORM_VALUES = {
    "id": st.integers(min_value=1, max_value=2**53),
    "username": st.text(min_size=1, max_size=20),
    "nickname": st.one_of(st.none(), st.text(max_size=10)),
    "email": st.one_of(st.none(), st.emails()),
    "state": st.integers(min_value=0, max_value=3),
    "active": st.booleans(),
}


def _as_binlog(attr_row: dict[str, Any]) -> dict[str, Any]:
    """What python-mysql-replication would hand us: column names, TINYINT(1) as int."""
    out = {}
    for attr, value in attr_row.items():
        out[USER_COLUMNS[attr]] = int(value) if isinstance(value, bool) else value
    return out


@given(before=st.fixed_dictionaries(ORM_VALUES), after=st.fixed_dictionaries(ORM_VALUES))
def test_orm_rows_and_binlog_rows_give_identical_keys(
    before: dict[str, Any], after: dict[str, Any]
) -> None:
    spec = resolve(
        "tests.Flagged",
        Sync(keys=["user:{id}", "user:by-name:{username}", "active:{active}:{id}", "mail:{email}"]),
        table="users",
        columns=USER_COLUMNS,
        primary_key=["id"],
    )
    from_orm = plan_keys(spec, before, after)
    change = RowChange(Op.UPDATE, "db", "users", _as_binlog(before), _as_binlog(after))
    assert keys_of(plan(change, spec)) == from_orm


@given(
    price=st.decimals(min_value=0, max_value=10**6, places=2),
    when=st.datetimes(min_value=dt.datetime(1971, 1, 1), max_value=dt.datetime(2100, 1, 1)),
)
def test_decimal_and_datetime_keys_match_across_paths(price: Decimal, when: dt.datetime) -> None:
    spec = resolve(
        "P",
        Sync(keys=["p:{price}:{at}"]),
        table="p",
        columns={"id": "id", "price": "price", "at": "created"},
        primary_key=["id"],
    )
    orm = plan_keys(spec, None, {"id": 1, "price": price, "at": when})
    binlog = plan(
        RowChange(
            Op.INSERT, None, "p", None, {"id": 1, "price": Decimal(str(price)), "created": when}
        ),
        spec,
    )
    assert keys_of(binlog) == orm


def test_projection_to_document_and_custom_id() -> None:
    spec = resolve(
        "Doc",
        Sync(
            search=Projection(
                index="docs",
                id="d-{slug}",
                to_document=lambda r: {"title": r["title"].upper(), "price": r["price"]},
            )
        ),
        table="docs",
        columns={"id": "id", "slug": "slug", "title": "title", "price": "price"},
        primary_key=["id"],
    )
    (doc,) = plan(
        RowChange(
            Op.INSERT,
            None,
            "docs",
            None,
            {"id": 1, "slug": "x", "title": "t", "price": Decimal("2.5")},
            POS,
        ),
        spec,
    )
    assert isinstance(doc, IndexDoc)
    assert (doc.doc_id, dict(doc.document)) == ("d-x", {"title": "T", "price": 2.5})
