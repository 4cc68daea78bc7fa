"""ResolvedProjection's fast paths render what the plain definition renders.

``document`` skips :func:`~cachesync.values.json_value` for plain values and
``plan`` reuses the new document id when the id fields kept their str/int
values. Both are checked against the definition (every field through
``json_value``, both ids rendered) on generated rows whose id values are equal
but render apart (``1`` and ``1.0``, one instant in two time zones), so a fast
path that trusted equality would fail here.
"""

from __future__ import annotations

import datetime as dt
import enum
from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from cachesync import BinlogPosition, DeleteDoc, IndexDoc, Projection, Sync, resolve
from cachesync.keys import document_id
from cachesync.tables import TableSpec
from cachesync.values import json_value

POS = BinlogPosition("mysql-bin.000003", 4321, 0)


class Colour(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 7


def spec(id_template: str = "{k}") -> TableSpec:
    return resolve(
        "Thing",
        Sync(search=Projection(index="things", id=id_template, fields=["k", "a", "b"])),
        table="things",
        columns={"pk": "pk", "k": "k", "a": "a", "b": "b"},
        primary_key=["pk"],
    )


UTC = dt.UTC
PLUS2 = dt.timezone(dt.timedelta(hours=2))
#: Values whose equality does not mean one rendering, and plain ones that do.
ID_VALUES = st.sampled_from(
    [
        1,
        1.0,
        True,
        "1",
        Level.HIGH,
        7,
        Decimal("1.50"),
        Decimal("1.5"),
        dt.datetime(2026, 1, 1, 12, tzinfo=UTC),
        dt.datetime(2026, 1, 1, 14, tzinfo=PLUS2),
        "x:y",
        "é",
        None,
    ]
)
VALUES = st.one_of(
    st.none(),
    st.integers(),
    st.booleans(),
    st.floats(allow_nan=False),
    st.text(),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.datetimes(),
    st.binary(max_size=8),
    st.sampled_from([Colour.RED, Level.HIGH]),
)


def reference_plan(s: TableSpec, before: Any, after: Any) -> list[Any]:
    """The definition: both ids rendered, every field through json_value."""
    (p,) = s.projections

    def live(row: Any) -> str | None:
        if row is None:
            return None
        rendered = p.id_template.render(row)
        return None if rendered is None else document_id(rendered)

    old_id, new_id = live(before), live(after)
    actions: list[Any] = []
    if new_id is not None:
        body = {name: json_value(after[name]) for name in ("k", "a", "b")}
        actions.append(IndexDoc("things", new_id, body, POS, None))
    if old_id is not None and old_id != new_id:
        actions.append(DeleteDoc("things", old_id, POS, None))
    return actions


def comparable(actions: list[Any]) -> list[Any]:
    return [
        (type(a).__name__, a.doc_id, dict(a.document) if isinstance(a, IndexDoc) else None)
        for a in actions
    ]


@given(
    old_k=ID_VALUES,
    new_k=ID_VALUES,
    a=VALUES,
    b=VALUES,
    inserted=st.booleans(),
    composite=st.booleans(),
)
def test_plan_matches_the_definition(
    old_k: Any, new_k: Any, a: Any, b: Any, inserted: bool, composite: bool
) -> None:
    s = spec("{k}:{a}" if composite else "{k}")
    (p,) = s.projections
    before = None if inserted else {"pk": 1, "k": old_k, "a": a, "b": b}
    after = {"pk": 1, "k": new_k, "a": a, "b": b}
    got = p.plan(s, before, after, POS, (None, None))
    assert comparable(got) == comparable(reference_plan(s, before, after))
    for action in got:  # JSON-ready: what json_value gives, key for key
        if isinstance(action, IndexDoc):
            assert list(action.document) == ["k", "a", "b"]


def test_equal_ids_that_render_apart_move_the_document() -> None:
    s = spec()
    (p,) = s.projections
    noon_utc = {"pk": 1, "k": dt.datetime(2026, 1, 1, 12, tzinfo=UTC), "a": 0, "b": 0}
    same_instant = {**noon_utc, "k": dt.datetime(2026, 1, 1, 14, tzinfo=PLUS2)}
    assert noon_utc["k"] == same_instant["k"]
    moved = p.plan(s, noon_utc, same_instant, POS, (None, None))
    assert [type(a) for a in moved] == [IndexDoc, DeleteDoc]
    assert moved[0].doc_id != moved[1].doc_id
    one_float = {**noon_utc, "k": 1.0}
    one_int = {**noon_utc, "k": 1}
    assert [a.doc_id for a in p.plan(s, one_float, one_int, POS, (None, None))] == ["1", "1.0"]
