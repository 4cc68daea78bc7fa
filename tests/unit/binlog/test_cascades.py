"""Pure parts of cascade following: coverage analysis, rules from DDL, when removals are final."""

from __future__ import annotations

from typing import Any

from cachesync import Sync, resolve
from cachesync.binlog.checkpoint import ResumePoint
from cachesync.binlog.foreignkeys import ForeignKey, _rules_from_ddl, analyse, parent_specs
from cachesync.binlog.reverseindex import covered, decode, decode_entry, encode, encode_entry
from cachesync.changes import BinlogPosition
from cachesync.registry import Registry


def _registry(*tables: str, invalidates: Any = None) -> Registry:
    registry = Registry()
    for table in tables:
        registry.add(
            resolve(
                f"m.{table}",
                Sync(keys=[table + ":{id}"], invalidates=invalidates),
                table=table,
                schema="app",
                columns={"id": "id", "parent_id": "parent_id"},
                primary_key=["id"],
            )
        )
    return registry


def _fk(
    child: str, parent: str, on_delete: str = "CASCADE", on_update: str = "RESTRICT"
) -> ForeignKey:
    return ForeignKey(
        "app",
        f"{child}_fk",
        child,
        ("parent_id",),
        "app",
        parent,
        ("id",),
        on_update=on_update,
        on_delete=on_delete,
    )


def test_a_cascade_into_a_watched_child_is_covered_and_restrict_is_ignored() -> None:
    coverage = analyse(
        _registry("posts", "comments"),
        [_fk("comments", "posts"), _fk("posts", "authors", "RESTRICT")],
        None,
    )
    assert [fk.name for fk in coverage.covered] == ["comments_fk"]
    assert coverage.uncovered == []
    assert coverage.referenced_columns("app", "posts") == ("id",)


def test_an_unwatched_parent_is_streamed_through_a_spec_without_keys() -> None:
    registry = _registry("comments")
    coverage = analyse(registry, [_fk("comments", "posts", "SET NULL")], None)
    (spec,) = parent_specs(registry, coverage, None)
    assert (spec.schema, spec.table, spec.key_templates, spec.projections) == (
        "app",
        "posts",
        (),
        (),
    )
    assert spec.columns == {"id": "id"}


def test_a_chain_through_an_unwatched_table_is_named() -> None:
    coverage = analyse(
        _registry("authors", "comments"), [_fk("posts", "authors"), _fk("comments", "posts")], None
    )
    assert [fk.name for fk in coverage.covered] == ["comments_fk"]
    (reason,) = coverage.uncovered
    assert "posts_fk" in reason and "app.posts is not watched" in reason


def test_invalidates_of_cascade_deleted_rows_is_named() -> None:
    coverage = analyse(
        _registry("comments", invalidates=lambda b, a: []), [_fk("comments", "posts")], None
    )
    (reason,) = coverage.uncovered
    assert "invalidates=" in reason


def test_rules_are_read_from_show_create_table() -> None:
    ddl = (
        "CREATE TABLE `c` (\n  `id` int NOT NULL,\n  `a` int, `b` int,\n"
        "  CONSTRAINT `c_a` FOREIGN KEY (`a`) REFERENCES `p` (`id`) ON DELETE CASCADE ON UPDATE SET NULL,\n"
        "  CONSTRAINT `we``ird` FOREIGN KEY (`b`) REFERENCES `other`.`q` (`x`)\n) ENGINE=InnoDB"
    )

    class Cursor:
        def __enter__(self) -> Cursor:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def execute(self, sql: str) -> None:
            assert sql == "SHOW CREATE TABLE `app`.`c`"

        def fetchone(self) -> tuple[str, str]:
            return ("c", ddl)

    class Conn:
        def cursor(self) -> Cursor:
            return Cursor()

    assert _rules_from_ddl(Conn(), "app", "c") == {
        "c_a": ("SET NULL", "CASCADE"),
        "we`ird": ("RESTRICT", "RESTRICT"),
    }


def test_a_removal_is_final_only_once_the_checkpoint_passed_it() -> None:
    at = BinlogPosition("mysql-bin.000002", 500, 3)
    assert not covered(None, at)
    assert not covered(ResumePoint("mysql-bin.000002", 400), at)  # its transaction is pending
    assert not covered(
        ResumePoint("mysql-bin.000002", 400, BinlogPosition("mysql-bin.000002", 500, 2)), at
    )
    assert covered(
        ResumePoint("mysql-bin.000002", 400, BinlogPosition("mysql-bin.000002", 500, 3)), at
    )
    assert covered(ResumePoint("mysql-bin.000002", 600), at)
    assert covered(ResumePoint("mysql-bin.000003", 4), at)
    assert not covered(ResumePoint("mysql-bin.000001", 900), at)


def test_entries_round_trip_losslessly() -> None:
    import datetime as dt
    from decimal import Decimal

    values = {"id": Decimal("1.50"), "at": dt.datetime(2024, 1, 2, 3, 4, 5), "b": b"\xff\x00"}
    assert decode(encode(values)) == values
    key = "k:" + b"\xff".decode("utf-8", "surrogateescape")
    entry = decode_entry(encode_entry([key], [["idx", "1"]], values))
    assert entry == {"keys": [key], "docs": [["idx", "1"]], "ref": values}


def test_only_ddl_that_may_touch_a_watched_schema_rereads_the_foreign_keys() -> None:
    """A busy server runs DDL all day in other schemas; each re-read costs a connection
    and catalogue queries on the reading thread, so those statements are ignored."""
    from cachesync.binlog.cascades import Cascades
    from cachesync.binlog.reverseindex import MemoryReverseIndex

    cascades = Cascades({}, _registry("posts"), MemoryReverseIndex(), default_schema="app")
    cascades.schema_changed(b"other_app", "ALTER TABLE orders ADD COLUMN note TEXT")
    cascades.schema_changed("other_app", "CREATE TABLE t (id INT)")
    assert not cascades._dirty
    cascades.schema_changed(
        b"app", "ALTER TABLE posts ADD COLUMN note TEXT"
    )  # bytes: the library's
    assert cascades._dirty
    cascades._dirty = False
    cascades.schema_changed(None, "ALTER TABLE `APP`.posts DROP FOREIGN KEY x")  # named in the text
    assert cascades._dirty
