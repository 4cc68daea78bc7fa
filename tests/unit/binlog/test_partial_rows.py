"""How framing turns the library's rows of a partial event into PartialRows (no service).

The events are stand-ins shaped like python-mysql-replication 1.0.x's: an
absent column comes as ``None`` with ``NONE_SOURCE.COLS_BITMAP``; a MySQL 8
``PARTIAL_UPDATE_ROWS_EVENT`` (``binlog_row_value_options=PARTIAL_JSON``)
carries a JSON column of the after image as a ``JsonDiff`` (or ``None`` with
``NONE_SOURCE.JSON_PARTIAL_UPDATE``). MySQL itself cannot run here, so the
JSON case follows the library's code and tests, not a recorded event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pymysqlreplication.constants import FIELD_TYPE, NONE_SOURCE
from pymysqlreplication.json_binary import JsonDiff, JsonDiffOperation

from cachesync.binlog.decoder import RowDecoder
from cachesync.binlog.framing import EventParser, PartialRows


@dataclass
class _Column:
    name: str
    type: int


@dataclass
class _Event:
    rows: list[dict[str, Any]]
    columns: list[_Column]


COLUMNS = [
    _Column("id", FIELD_TYPE.LONG),
    _Column("name", FIELD_TYPE.VARCHAR),
    _Column("bio", FIELD_TYPE.BLOB),
    _Column("doc", FIELD_TYPE.JSON),
]


def _images(rows: list[dict[str, Any]]) -> Any:
    parser = EventParser(["t"], None)
    parser.library_event = lambda packet, table_map: _Event(rows, COLUMNS)  # type: ignore[method-assign]
    return parser._library_images(object(), {}, RowDecoder([]))


def _update(
    old: dict[str, Any],
    new: dict[str, Any],
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One row of an UpdateRowsEvent: values and the none sources of each image."""
    return {
        "before_values": old,
        "before_none_sources": before or {},
        "after_values": new,
        "after_none_sources": after or {},
    }


def test_full_rows_pass_unchanged() -> None:
    row = {"id": 1, "name": "a", "bio": None, "doc": None}
    images = _images([_update(row, row, after={"bio": NONE_SOURCE.NULL, "doc": "null"})])
    assert images == [(row, row)]


def test_absent_columns_are_left_out_and_the_setting_is_named() -> None:
    bitmap = NONE_SOURCE.COLS_BITMAP
    minimal = _update(
        {"id": 1, "name": None, "bio": None, "doc": None},
        {"id": None, "name": "b", "bio": None, "doc": None},
        before={"name": bitmap, "bio": bitmap, "doc": bitmap},
        after={"id": bitmap, "bio": bitmap, "doc": bitmap},
    )
    rows = _images([minimal])
    assert isinstance(rows, PartialRows)
    assert rows.images == [({"id": 1}, {"name": "b"})]
    assert rows.columns == ("id", "name", "bio", "doc")
    assert rows.setting == "binlog_row_image=MINIMAL" and not rows.unknown_after

    noblob = _update(
        {"id": 1, "name": "a", "bio": None, "doc": None},
        {"id": 1, "name": "b", "bio": None, "doc": None},
        before={"bio": bitmap, "doc": NONE_SOURCE.NULL},
        after={"bio": bitmap, "doc": NONE_SOURCE.NULL},
    )
    rows = _images([noblob])
    assert isinstance(rows, PartialRows)
    assert rows.images == [
        ({"id": 1, "name": "a", "doc": None}, {"id": 1, "name": "b", "doc": None})
    ]
    assert rows.setting == "binlog_row_image=NOBLOB"


def test_a_partial_json_update_is_a_partial_image_of_that_column() -> None:
    diff = JsonDiff(JsonDiffOperation.Replace, b"$.a", b"1")
    row = {"id": 1, "name": "a", "bio": "x", "doc": {"a": 0}}
    rows = _images(
        [
            _update(row, {**row, "doc": diff}),
            _update(row, {**row, "doc": None}, after={"doc": NONE_SOURCE.JSON_PARTIAL_UPDATE}),
        ]
    )
    assert isinstance(rows, PartialRows)
    assert rows.unknown_after == frozenset({"doc"})
    assert rows.setting == "binlog_row_value_options=PARTIAL_JSON"
    without_doc = {"id": 1, "name": "a", "bio": "x"}
    assert rows.images == [(row, without_doc), (row, without_doc)]
