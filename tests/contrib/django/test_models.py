"""The outbox and checkpoint tables Django migrates are the ones every other part of cachesync uses."""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection, connections, transaction

from cachesync.actions import DeleteKeys
from cachesync.binlog.checkpoint import CHECKPOINT_TABLE_SQL
from cachesync.contrib.django.migrations import __name__ as migrations_package
from cachesync.contrib.django.models import Checkpoint, Outbox
from cachesync.outbox.schema import create_table_sql
from tests.contrib.django.testapp.models import Article

pytestmark = pytest.mark.services

migration = __import__(f"{migrations_package}.0001_initial", fromlist=["OUTBOX_SQL"])


# The migration's DDL is frozen text; create_table_sql() is compiled from the one
# outbox Table, so the two are compared by what they build, not character by character.


def test_migration_ddl_is_the_shared_outbox_schema_on_mysql(django_db: str) -> None:
    scratch = "cachesync_django_ddl"
    built = []
    with connection.cursor() as cursor:
        try:
            for ddl in (migration.OUTBOX_SQL["mysql"], create_table_sql(dialect="mysql")):
                cursor.execute(f"DROP DATABASE IF EXISTS {scratch}")
                cursor.execute(f"CREATE DATABASE {scratch} CHARACTER SET utf8mb4")
                cursor.execute(f"USE {scratch}")
                cursor.execute(ddl)
                built.append(_show_create(cursor, "cachesync_outbox"))
        finally:
            cursor.execute(f"USE {django_db}")
            cursor.execute(f"DROP DATABASE IF EXISTS {scratch}")
    frozen, generated = built
    assert "KEY `cachesync_outbox_state_id` (`state`,`id`)" in frozen
    assert generated == frozen


def _sqlite_shape(ddl: str) -> dict[str, Any]:
    db = sqlite3.connect(":memory:")
    try:
        db.execute(ddl)
        columns = [
            # an INTEGER PRIMARY KEY is the rowid: NOT NULL or not, it is never NULL
            (name, kind, bool(notnull or pk), default, pk)
            for _, name, kind, notnull, default, pk in db.execute(
                "PRAGMA table_info(cachesync_outbox)"
            )
        ]
        indexes = list(db.execute("PRAGMA index_list(cachesync_outbox)"))
        db.execute("INSERT INTO cachesync_outbox (kind, payload) VALUES ('intent', '[]')")
        row = db.execute(
            "SELECT id, state, attempts, available_at FROM cachesync_outbox"
        ).fetchone()
        # AUTOINCREMENT (ids never reused) is what creates sqlite_sequence
        sequence = list(db.execute("SELECT name, seq FROM sqlite_sequence"))
    finally:
        db.close()
    return {"columns": columns, "indexes": indexes, "row": row, "sequence": sequence}


def test_migration_ddl_is_the_shared_outbox_schema_on_sqlite() -> None:
    frozen = _sqlite_shape(migration.OUTBOX_SQL["sqlite"])
    assert frozen["sequence"] == [("cachesync_outbox", 1)]
    assert frozen["row"] == (1, "pending", 0, None)
    assert _sqlite_shape(create_table_sql(dialect="sqlite")) == frozen


def _pg_shape(ddl: str) -> dict[str, Any]:
    """Columns, primary key and options of a one-table PostgreSQL ``CREATE TABLE``.

    Normalises only what PostgreSQL itself treats as the same: quoting, layout,
    ``WITHOUT TIME ZONE`` (the default), ``NULL`` (the default) and an inline
    ``PRIMARY KEY`` (which implies ``NOT NULL``) versus a table-level one.
    """
    head, _, rest = ddl.strip().partition("(")
    body, _, options = rest.rpartition(")")
    columns: dict[str, tuple[str, bool, str | None]] = {}
    pk: list[str] = []
    for item in re.split(r",\s*\n", body.strip()):
        item = " ".join(item.replace('"', "").split())
        if item.startswith("PRIMARY KEY"):
            pk += [c.strip() for c in item[item.index("(") + 1 : -1].split(",")]
            continue
        name, spec = item.split(" ", 1)
        default = re.search(r"DEFAULT (\S+)", spec)
        if " PRIMARY KEY" in spec:
            pk.append(name)
        not_null = "NOT NULL" in spec or " PRIMARY KEY" in spec
        kind = re.sub(r" (NOT NULL|NULL|PRIMARY KEY|DEFAULT \S+)", "", " " + spec).strip()
        kind = kind.replace(" WITHOUT TIME ZONE", "")
        columns[name] = (kind, not_null, default.group(1) if default else None)
    return {
        "head": " ".join(head.replace('"', "").split()),
        "order": list(columns),
        "columns": columns,
        "pk": pk,
        "options": options.strip(),
    }


def test_migration_ddl_is_the_shared_outbox_schema_on_postgresql() -> None:
    frozen = _pg_shape(migration.OUTBOX_SQL["postgresql"])
    assert frozen["columns"]["id"] == ("BIGSERIAL", True, None)
    assert frozen["columns"]["created_at"] == ("TIMESTAMP(6)", True, "CURRENT_TIMESTAMP")
    assert frozen["pk"] == ["id"] and len(frozen["columns"]) == 8
    assert _pg_shape(create_table_sql(dialect="postgresql")) == frozen


def test_django_model_describes_the_outbox_table() -> None:
    """The model is the ORM's view of the one outbox Table: same columns, nullability, sizes."""
    from sqlalchemy import MetaData, String

    from cachesync.outbox.table import outbox_table

    table = outbox_table(MetaData())
    fields = {f.column: f for f in Outbox._meta.concrete_fields}
    assert list(fields) == [c.name for c in table.columns]
    assert Outbox._meta.db_table == table.name
    for column in table.columns:
        found = fields[column.name]
        assert found.primary_key == column.primary_key, column.name
        assert found.null == bool(column.nullable and not column.primary_key), column.name
        if isinstance(column.type, String) and column.type.length:
            assert found.max_length == column.type.length, column.name
    assert [tuple(i.fields) for i in Outbox._meta.indexes] == [
        tuple(c.name for c in index.columns) for index in table.indexes
    ]
    assert [i.name for i in Outbox._meta.indexes] == [index.name for index in table.indexes]


def test_migration_ddl_is_the_sidecar_checkpoint_schema() -> None:
    assert migration.CHECKPOINT_SQL["mysql"] == CHECKPOINT_TABLE_SQL


def test_models_match_the_migration_state(django_db: str) -> None:
    call_command("makemigrations", "cachesync", check=True, dry_run=True, verbosity=0)


def _show_create(cursor: Any, table: str) -> str:
    cursor.execute(f"SHOW CREATE TABLE {table}")
    return re.sub(r" AUTO_INCREMENT=\d+", "", cursor.fetchone()[1])


def test_migrated_tables_equal_tables_made_by_the_other_integrations(django_db: str) -> None:
    scratch = "cachesync_django_scratch"
    with connection.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {scratch}")
        cursor.execute(f"CREATE DATABASE {scratch} CHARACTER SET utf8mb4")
        try:
            cursor.execute(f"USE {scratch}")
            cursor.execute(create_table_sql(dialect="mysql"))
            cursor.execute(CHECKPOINT_TABLE_SQL)
            theirs = [_show_create(cursor, t) for t in ("cachesync_outbox", "cachesync_checkpoint")]
            cursor.execute(f"USE {django_db}")
            ours = [_show_create(cursor, t) for t in ("cachesync_outbox", "cachesync_checkpoint")]
        finally:
            cursor.execute(f"USE {django_db}")
            cursor.execute(f"DROP DATABASE IF EXISTS {scratch}")
    assert ours == theirs


def test_outbox_and_checkpoint_models_read_the_rows(clean: Any) -> None:
    author = User.objects.create(username="ada")
    Article.objects.create(title="T", slug="t", author=author)
    row = Outbox.objects.get()
    assert (row.kind, row.state, row.attempts) == ("intent", "pending", 0)
    assert row.actions() == [DeleteKeys((f"author:{author.pk}:articles",))]
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO cachesync_checkpoint (name, position, updated_at) "
            "VALUES ('csdj', 'binlog:mysql-bin.000001:4', UTC_TIMESTAMP(6)) "
            "ON DUPLICATE KEY UPDATE position = VALUES(position)"
        )
    assert Checkpoint.objects.get(name="csdj").position == "binlog:mysql-bin.000001:4"


@pytest.fixture
def sqlite_db(clean: Any) -> Iterator[str]:
    call_command("migrate", database="sqlite", verbosity=0, interactive=False)
    yield "sqlite"
    connections["sqlite"].close()
    os.unlink(settings.DATABASES["sqlite"]["NAME"])


def test_outbox_intents_on_a_database_without_binlog(sqlite_db: str) -> None:
    author = User.objects.using(sqlite_db).create(username="ada")
    with transaction.atomic(using=sqlite_db):
        Article.objects.using(sqlite_db).create(title="1", slug="1", author=author)
        Article.objects.using(sqlite_db).create(title="2", slug="2", author=author)
    with pytest.raises(RuntimeError), transaction.atomic(using=sqlite_db):
        Article.objects.using(sqlite_db).create(title="3", slug="3", author=author)
        raise RuntimeError
    rows = list(Outbox.objects.using(sqlite_db).all())
    assert len(rows) == 1  # one per committed transaction, none for the rolled-back one
    assert rows[0].actions() == [DeleteKeys((f"author:{author.pk}:articles",))]
    assert not Outbox.objects.exists()  # nothing leaked into the MariaDB outbox


def test_the_migration_reverses(sqlite_db: str) -> None:
    tables = connections[sqlite_db].introspection.table_names
    assert {"cachesync_outbox", "cachesync_checkpoint"} <= set(tables())
    call_command("migrate", "cachesync", "zero", database=sqlite_db, verbosity=0)
    assert not {"cachesync_outbox", "cachesync_checkpoint"} & set(tables())
    call_command("migrate", "cachesync", database=sqlite_db, verbosity=0)
    assert {"cachesync_outbox", "cachesync_checkpoint"} <= set(tables())
