"""The outbox DDL is compiled from the one Table, for every dialect, as one statement."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import MetaData

from cachesync.contrib.sqlalchemy import outbox_table as sqlalchemy_outbox_table
from cachesync.outbox import create_table_sql
from cachesync.outbox.schema import COLUMNS
from cachesync.outbox.table import outbox_table


def test_columns_and_the_sqlalchemy_table_come_from_the_one_definition() -> None:
    assert sqlalchemy_outbox_table is outbox_table
    assert tuple(c.name for c in outbox_table(MetaData()).columns) == COLUMNS
    assert COLUMNS[:3] == ("id", "created_at", "kind")


@pytest.mark.parametrize("dialect", ["mysql", "postgresql", "sqlite"])
def test_each_dialect_gets_one_if_not_exists_statement_naming_the_table(dialect: str) -> None:
    ddl = create_table_sql("my_outbox", dialect)
    assert ddl.startswith("CREATE TABLE IF NOT EXISTS my_outbox (")
    assert ";" not in ddl and "CREATE INDEX" not in ddl  # one execute() on any driver
    for column in COLUMNS:
        assert f"\n\t{column} " in ddl


def test_mysql_declares_the_claim_index_inline_and_innodb() -> None:
    ddl = create_table_sql("my_outbox", "mysql")
    assert "KEY my_outbox_state_id (state, id)\n)" in ddl
    assert ddl.endswith("ENGINE=InnoDB CHARSET=utf8mb4")
    assert "created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)" in ddl


def test_sqlite_ddl_runs_and_fills_the_defaults() -> None:
    db = sqlite3.connect(":memory:")
    db.execute(create_table_sql(dialect="sqlite"))
    db.execute(create_table_sql(dialect="sqlite"))  # IF NOT EXISTS
    db.execute("INSERT INTO cachesync_outbox (kind, payload) VALUES ('intent', '[]')")
    row = db.execute("SELECT id, state, attempts, created_at FROM cachesync_outbox").fetchone()
    assert row[:3] == (1, "pending", 0) and row[3] is not None
    db.close()


def test_unknown_dialect_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'oracle'.*mysql, postgresql, sqlite"):
        create_table_sql(dialect="oracle")
