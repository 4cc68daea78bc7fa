"""The outbox and checkpoint tables Django migrates are the ones every other part of cachesync uses."""

from __future__ import annotations

import os
import re
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


@pytest.mark.parametrize("dialect", ["mysql", "postgresql", "sqlite"])
def test_migration_ddl_is_the_shared_outbox_schema(dialect: str) -> None:
    assert migration.OUTBOX_SQL[dialect] == create_table_sql(dialect=dialect)


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
