"""Refresher: a document action becomes what the row says NOW (DESIGN.md §3)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cachesync import (
    BinlogPosition,
    DeleteDoc,
    DeleteKeys,
    IndexDoc,
    PermanentError,
    Registry,
    RowRef,
    TransientError,
)
from cachesync.registry import TableSpec
from cachesync.reread import Refresher, RowReader
from tests.unit.models import user_spec

POS = BinlogPosition("mysql-bin.000002", 900, 0)


class Rows(RowReader):
    def __init__(self, rows: dict[int, dict[str, Any]], error: Exception | None = None) -> None:
        self.rows = rows
        self.error = error
        self.calls = 0

    def fetch(
        self, spec: TableSpec, refs: Sequence[RowRef]
    ) -> dict[RowRef, Mapping[str, Any] | None]:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return {r: self.rows.get(int(r.primary_key["id"])) for r in refs}


def row(pk: int, name: str, state: int = 0) -> dict[str, Any]:
    return {
        "id": pk,
        "user_name": name,
        "nickname": f"nick{pk}",
        "email": None,
        "state": state,
        "is_active": 1,
    }


def ref(pk: int, table: str = "users") -> RowRef:
    return RowRef(None, table, {"id": pk})


def registry() -> Registry:
    reg = Registry()
    reg.add(user_spec())
    return reg


def test_document_actions_take_the_current_row_and_keep_their_version() -> None:
    reader = Rows({1: row(1, "now"), 2: row(2, "hidden", state=1)})
    stale = IndexDoc("users", "1", {"username": "then"}, POS, ref(1))
    old_delete = DeleteDoc("users", "1", POS, ref(1))  # row was deleted, then re-inserted
    leaves_when = IndexDoc("users", "2", {"username": "hidden"}, POS, ref(2))
    gone = IndexDoc("users", "3", {"username": "gone"}, POS, ref(3))
    keys = DeleteKeys(("user:1",), POS)
    no_source = IndexDoc("users", "9", {"username": "as is"}, POS)
    out = Refresher(reader, registry()).refresh(
        [stale, old_delete, leaves_when, gone, keys, no_source]
    )
    assert out == [
        IndexDoc("users", "1", {"username": "now", "nickname": "nick1"}, POS, ref(1)),
        IndexDoc("users", "1", {"username": "now", "nickname": "nick1"}, POS, ref(1)),
        DeleteDoc("users", "2", POS, ref(2)),
        DeleteDoc("users", "3", POS, ref(3)),
        keys,
        no_source,
    ]
    assert reader.calls == 1  # one read per table


def test_a_table_no_model_declares_is_a_permanent_error_naming_the_fix() -> None:
    (out,) = Refresher(Rows({}), registry()).refresh(
        [IndexDoc("x", "1", {}, POS, ref(1, "orders"))]
    )
    assert isinstance(out, PermanentError) and "--models" in str(out)


def test_reader_errors_permanent_per_table_transient_for_the_call() -> None:
    action = IndexDoc("users", "1", {}, POS, ref(1))
    (out,) = Refresher(Rows({}, PermanentError("no such table")), registry()).refresh([action])
    assert isinstance(out, PermanentError)
    try:
        Refresher(Rows({}, TransientError("down")), registry()).refresh([action])
    except TransientError:
        pass
    else:
        raise AssertionError("a database outage must fail the whole call")


def test_a_row_key_that_is_not_the_primary_key_is_refused_not_read_as_gone() -> None:
    from cachesync import BinlogPosition, IndexDoc, PermanentError, RowRef
    from cachesync.reread import Refresher

    class NeverCalled:
        def fetch(self, spec: object, refs: object) -> dict[object, object]:
            raise AssertionError("a forged key must not reach the database")

    registry = Registry()
    registry.add(user_spec())
    forged = IndexDoc(
        "users", "1", {}, BinlogPosition("mysql-bin.000001", 4), RowRef(None, "users", {"nope": 1})
    )
    (result,) = Refresher(NeverCalled(), registry).refresh([forged])  # type: ignore[arg-type]
    assert isinstance(result, PermanentError) and "primary key" in str(result)
