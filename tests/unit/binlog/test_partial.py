"""Completing partial row images (binlog/partial.py) with generated rows: pure, no service.

The oracle is :func:`cachesync.planning.plan` on the FULL images the partial
event was cut from: what the partial path deletes and indexes must be part of
that, and whatever of it is missing must be reported, never dropped silently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cachesync import BinlogPosition, Op, Projection, RowChange, SchemaError, Sync, plan, resolve
from cachesync.actions import Action, DeleteDoc, IndexDoc, RowRef
from cachesync.binlog.partial import (
    CompletedChange,
    PartialChange,
    PartialDeadLetters,
    PartialImages,
    complete_change,
    missing_after,
    plan_completed,
)
from cachesync.planning import merge_key_deletes
from cachesync.registry import Registry, TableSpec
from cachesync.reread import RowReader

POS = BinlogPosition("mysql-bin.000003", 4242, 0)
COLUMNS = ("id", "user_name", "nickname", "email", "state", "bio", "unmapped")
BLOBS = frozenset({"bio", "unmapped"})
MAPPED = {
    "id": "id",
    "username": "user_name",
    "nickname": "nickname",
    "email": "email",
    "state": "state",
    "bio": "bio",
}


def _spec(kind: str) -> TableSpec:
    keys = ["u:{id}", "u:by-name:{username}", "u:by-bio:{bio}"]
    if kind == "when":
        search = Projection(
            index="users", fields=["username", "bio"], when=lambda r: r["state"] == 0
        )
        sync = Sync(keys=keys, search=search)
    elif kind == "fields":
        sync = Sync(keys=keys, search=Projection(index="users", fields=["nickname"]))
    elif kind == "doc_by_name":
        sync = Sync(keys=keys[:1], search=Projection(index="users", id="{username}", fields=["id"]))
    else:  # invalidates
        sync = Sync(keys=keys[:2], invalidates=lambda b, a: [f"list:{(a or b or {})['state']}"])
    return resolve(
        f"t.{kind}", sync, table="users", schema="db", columns=MAPPED, primary_key=["id"]
    )


SPECS = {kind: _spec(kind) for kind in ("when", "fields", "doc_by_name", "invalidates")}

values = {
    "id": st.integers(1, 3),
    "user_name": st.sampled_from(["ann", "bob", None]),
    "nickname": st.sampled_from(["A", "B"]),
    "email": st.sampled_from(["a@x", None]),
    "state": st.integers(0, 1),
    "bio": st.sampled_from(["short", "long text", None]),
    "unmapped": st.sampled_from(["x", "y"]),
}
rows = st.fixed_dictionaries(values)


@dataclass
class Case:
    full: RowChange
    partial: PartialChange
    current: dict[str, Any] | None


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """A full change, the partial image a MINIMAL or NOBLOB session logs of it, the row now."""
    op = draw(st.sampled_from(list(Op)))
    mode = draw(st.sampled_from(["MINIMAL", "NOBLOB", "FULL"]))
    before = draw(rows) if op is not Op.INSERT else None
    after: dict[str, Any] | None = None
    assigned: set[str] = set()
    if op is Op.UPDATE:
        assert before is not None
        changes = draw(st.dictionaries(st.sampled_from(COLUMNS), st.none(), max_size=4))
        after = dict(before)
        for column in changes:
            after[column] = draw(values[column])
        # A statement may assign a column without changing it (SET a = a).
        assigned = {c for c in COLUMNS if after[c] != before[c]} | set(changes)
    elif op is Op.INSERT:
        after = draw(rows)
        assigned = {"id"} | draw(st.sets(st.sampled_from(COLUMNS)))
    pk = {"id"}
    if mode == "MINIMAL":
        old_cols = pk
        new_cols = assigned
    elif mode == "NOBLOB":
        old_cols = set(COLUMNS) - BLOBS
        new_cols = (set(COLUMNS) - BLOBS) | (assigned & BLOBS)
    else:
        old_cols = new_cols = set(COLUMNS)

    def cut(image: dict[str, Any] | None, keep: set[str]) -> dict[str, Any] | None:
        return None if image is None else {c: v for c, v in image.items() if c in keep}

    full = RowChange(op, "db", "users", before, after, POS)
    partial = PartialChange(
        op,
        "db",
        "users",
        cut(before, old_cols),
        cut(after, new_cols),
        POS,
        None,
        frozenset(COLUMNS),
        frozenset(),
        f"binlog_row_image={mode}",
    )
    gone = op is Op.DELETE or draw(st.booleans())
    return Case(full, partial, None if gone else after)


def _documents(actions: Sequence[Action]) -> tuple[dict[str, Any], set[str]]:
    written = {a.doc_id: dict(a.document) for a in actions if isinstance(a, IndexDoc)}
    deleted = {a.doc_id for a in actions if isinstance(a, DeleteDoc)}
    return written, deleted


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases(), kind=st.sampled_from(sorted(SPECS)))
def test_partial_images_apply_a_part_of_the_full_plan_and_report_the_rest(
    case: Case, kind: str
) -> None:
    spec = SPECS[kind]
    full_actions = plan(case.full, spec)
    read = case.partial.op is not Op.DELETE
    completed = complete_change(case.partial, spec, case.current, read=read)
    if isinstance(completed, CompletedChange):
        actions, losses = plan_completed(completed, spec)
    else:
        actions, losses = plan(completed, spec), []
    event(f"{type(completed).__name__}, {'reported' if losses else 'nothing lost'}")

    full_keys, keys = set(merge_key_deletes(full_actions)), set(merge_key_deletes(actions))
    assert keys <= full_keys, "a partial image must not invent keys"
    if full_keys - keys:
        assert losses, f"keys {full_keys - keys} dropped silently"
    full_written, full_deleted = _documents(full_actions)
    written, deleted = _documents(actions)
    for doc_id, document in written.items():
        # Written from the event, or from the row now, which is the full after image.
        assert full_written.get(doc_id) == document
    if case.current is not None or case.partial.op is Op.DELETE:
        assert not (deleted & set(full_written)), "never delete a document the row has"
        if set(full_written) - set(written):
            assert any("document" in loss for loss in losses)
        if full_deleted - deleted:
            assert any("old document id" in loss for loss in losses)
        if not losses:
            assert keys == full_keys
            assert written == full_written
    elif isinstance(completed, CompletedChange) and completed.row_gone:
        assert not written, "a row that is gone has no document"


@given(case=cases(), kind=st.sampled_from(sorted(SPECS)))
def test_full_images_are_planned_exactly_as_before(case: Case, kind: str) -> None:
    spec = SPECS[kind]
    full = case.full
    change = PartialChange(
        full.op, "db", "users", full.before, full.after, POS, None, frozenset(COLUMNS)
    )
    completed = complete_change(change, spec, None, read=False)
    assert not isinstance(completed, CompletedChange)
    assert plan(completed, spec) == plan(full, spec)


def _update(before: dict[str, Any], after: dict[str, Any]) -> PartialChange:
    return PartialChange(Op.UPDATE, "db", "users", before, after, POS, None, frozenset(COLUMNS))


def test_a_minimal_rename_deletes_the_new_keys_and_reports_the_old_one() -> None:
    spec = SPECS["when"]
    now = {"id": 1, "user_name": "bob", "nickname": "B", "email": None, "state": 0, "bio": "b"}
    completed = complete_change(_update({"id": 1}, {"user_name": "bob"}), spec, now, read=True)
    assert isinstance(completed, CompletedChange)
    actions, losses = plan_completed(completed, spec)
    assert set(merge_key_deletes(actions)) == {"u:1", "u:by-name:bob", "u:by-bio:b"}
    assert losses == ["before key 'u:by-name:{username}'"]
    written, deleted = _documents(actions)
    assert written == {"1": {"username": "bob", "bio": "b"}} and not deleted


def test_a_minimal_delete_deletes_the_pk_key_and_the_document_by_id() -> None:
    spec = SPECS["when"]
    change = PartialChange(Op.DELETE, "db", "users", {"id": 2}, None, POS, None, frozenset(COLUMNS))
    completed = complete_change(change, spec, None, read=False)
    assert isinstance(completed, CompletedChange)
    actions, losses = plan_completed(completed, spec)
    assert merge_key_deletes(actions) == ["u:2"]
    assert _documents(actions) == ({}, {"2"})
    assert losses == ["before key 'u:by-name:{username}'", "before key 'u:by-bio:{bio}'"]


def test_a_dropped_column_is_still_a_schema_error() -> None:
    spec = SPECS["fields"]
    change = PartialChange(
        Op.UPDATE, "db", "users", {"id": 1}, {"nickname": "N"}, POS, None,
        frozenset(COLUMNS) - {"user_name"},
    )  # fmt: skip
    completed = complete_change(change, spec, {"id": 1, "nickname": "N", "bio": None}, read=True)
    with pytest.raises(SchemaError, match="user_name"):
        plan(completed, spec)


def test_columns_no_declaration_reads_are_ignored() -> None:
    sync = Sync(keys=["u:{id}", "u:by-name:{username}"], search=Projection("users", ["nickname"]))
    spec = resolve("t.plain", sync, table="users", columns=MAPPED, primary_key=["id"])
    noblob = {c: 1 for c in COLUMNS if c not in BLOBS}
    change = _update(noblob, {**noblob, "nickname": "B"})  # bio and unmapped not logged
    assert missing_after(change, spec) == frozenset()
    completed = complete_change(change, spec, None, read=False)
    assert type(completed) is RowChange


class _Reader(RowReader):
    def __init__(self, rows: Mapping[int, dict[str, Any]]) -> None:
        self.rows = rows
        self.calls: list[list[RowRef]] = []

    def fetch(
        self, spec: TableSpec, refs: Sequence[RowRef]
    ) -> dict[RowRef, Mapping[str, Any] | None]:
        self.calls.append(list(refs))
        return {r: self.rows.get(r.primary_key["id"]) for r in refs}


class _Letters(PartialDeadLetters):
    def __init__(self) -> None:
        self.recorded: list[tuple[RowChange, str]] = []

    def record(self, change: RowChange, reason: str) -> None:
        self.recorded.append((change, reason))


def test_one_query_per_table_per_batch_and_one_dead_letter_per_unknowable_change(
    caplog: pytest.LogCaptureFixture,
) -> None:
    spec = SPECS["when"]
    registry = Registry()
    registry.add(spec)
    now = {
        i: {"id": i, "user_name": f"n{i}", "nickname": "N", "email": None, "state": 0, "bio": None}
        for i in range(1, 6)
    }
    reader, letters = _Reader(now), _Letters()
    images = PartialImages(registry, reader, letters)
    batch: list[RowChange] = [_update({"id": i}, {"nickname": "N"}) for i in range(1, 5)]
    batch.append(_update({"id": 5}, {"user_name": "n5"}))  # a rename: old name unknowable
    batch.append(RowChange(Op.UPDATE, "db", "users", now[1], now[1], POS))  # a FULL change
    completed = images.complete(batch)
    assert len(reader.calls) == 1 and len(reader.calls[0]) == 5
    assert completed[-1] is batch[-1]
    with caplog.at_level("ERROR", logger="cachesync.partial"):
        planned = [images.plan(change, spec) for change in completed]
    assert all(planned)
    assert len(letters.recorded) == 1
    change, reason = letters.recorded[0]
    assert change is batch[4]
    assert "u:by-name:{username}" in reason and "binlog_row_image=MINIMAL" in reason
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    for part in ("db.users", str(POS), "{'id': 5}", "binlog_row_image=MINIMAL"):
        assert part in line
