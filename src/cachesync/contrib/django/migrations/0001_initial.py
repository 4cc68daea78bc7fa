"""The outbox and checkpoint tables, with the DDL shared by every cachesync integration.

The SQL is frozen here (a migration must not change when library code does);
``tests/contrib/django/test_models.py`` fails if it drifts from
:func:`cachesync.outbox.schema.create_table_sql` or
:data:`cachesync.binlog.checkpoint.CHECKPOINT_TABLE_SQL`, which then calls for a
new migration.
"""

from typing import Any

import django.utils.timezone
from django.db import migrations, models

OUTBOX_SQL = {
    "mysql": """CREATE TABLE IF NOT EXISTS `cachesync_outbox` (
  `id` BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  `created_at` DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  `kind` VARCHAR(16) NOT NULL,
  `state` VARCHAR(16) NOT NULL DEFAULT 'pending',
  `payload` LONGTEXT NOT NULL,
  `attempts` INT NOT NULL DEFAULT 0,
  `available_at` DATETIME(6) NULL,
  `last_error` TEXT NULL,
  KEY `cachesync_outbox_state_id` (`state`, `id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    "postgresql": """CREATE TABLE IF NOT EXISTS "cachesync_outbox" (
  "id" BIGSERIAL PRIMARY KEY,
  "created_at" TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP,
  "kind" VARCHAR(16) NOT NULL,
  "state" VARCHAR(16) NOT NULL DEFAULT 'pending',
  "payload" TEXT NOT NULL,
  "attempts" INTEGER NOT NULL DEFAULT 0,
  "available_at" TIMESTAMP(6) NULL,
  "last_error" TEXT NULL
)""",
    "sqlite": """CREATE TABLE IF NOT EXISTS "cachesync_outbox" (
  "id" INTEGER PRIMARY KEY AUTOINCREMENT,
  "created_at" TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
  "kind" VARCHAR(16) NOT NULL,
  "state" VARCHAR(16) NOT NULL DEFAULT 'pending',
  "payload" TEXT NOT NULL,
  "attempts" INTEGER NOT NULL DEFAULT 0,
  "available_at" TIMESTAMP NULL,
  "last_error" TEXT NULL
)""",
}

CHECKPOINT_SQL = {
    "mysql": """CREATE TABLE IF NOT EXISTS cachesync_checkpoint (
    name VARCHAR(191) NOT NULL PRIMARY KEY,
    position VARCHAR(255) NOT NULL,
    commit_time DOUBLE NULL,
    updated_at DATETIME(6) NOT NULL
)""",
}


def create_tables(apps: Any, schema_editor: Any) -> None:
    connection = schema_editor.connection
    vendor = connection.vendor
    existing = set(connection.introspection.table_names())
    for model_name, ddl in (("Outbox", OUTBOX_SQL), ("Checkpoint", CHECKPOINT_SQL)):
        if vendor in ddl:
            schema_editor.execute(ddl[vendor])
            continue
        model = apps.get_model("cachesync", model_name)
        if model._meta.db_table not in existing:  # another backend: Django's own DDL
            schema_editor.create_model(model)


def drop_tables(apps: Any, schema_editor: Any) -> None:
    quote = schema_editor.connection.ops.quote_name
    for table in ("cachesync_outbox", "cachesync_checkpoint"):
        schema_editor.execute(f"DROP TABLE IF EXISTS {quote(table)}")


class Migration(migrations.Migration):  # type: ignore[misc]
    initial = True
    dependencies: list[tuple[str, str]] = []

    operations = [
        # The models first (state only), so that create_tables can build them for
        # backends without frozen DDL; then the tables, with the shared DDL.
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="Outbox",
                    fields=[
                        ("id", models.BigAutoField(primary_key=True, serialize=False)),
                        (
                            "created_at",
                            models.DateTimeField(default=django.utils.timezone.now),
                        ),
                        (
                            "kind",
                            models.CharField(
                                choices=[("intent", "intent"), ("failed", "failed")],
                                max_length=16,
                            ),
                        ),
                        (
                            "state",
                            models.CharField(
                                choices=[
                                    ("pending", "pending"),
                                    ("done", "done"),
                                    ("dead", "dead"),
                                ],
                                default="pending",
                                max_length=16,
                            ),
                        ),
                        ("payload", models.TextField()),
                        ("attempts", models.IntegerField(default=0)),
                        ("available_at", models.DateTimeField(blank=True, null=True)),
                        ("last_error", models.TextField(blank=True, null=True)),
                    ],
                    options={
                        "verbose_name": "outbox row",
                        "db_table": "cachesync_outbox",
                        "indexes": [
                            models.Index(fields=["state", "id"], name="cachesync_outbox_state_id")
                        ],
                    },
                ),
                migrations.CreateModel(
                    name="Checkpoint",
                    fields=[
                        (
                            "name",
                            models.CharField(max_length=191, primary_key=True, serialize=False),
                        ),
                        ("position", models.CharField(max_length=255)),
                        ("commit_time", models.FloatField(blank=True, null=True)),
                        ("updated_at", models.DateTimeField()),
                    ],
                    options={"db_table": "cachesync_checkpoint"},
                ),
            ],
        ),
        migrations.RunPython(create_tables, drop_tables, atomic=False),
    ]
