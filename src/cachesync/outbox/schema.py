"""The outbox table, in plain SQL so any application (SQLAlchemy, Django, raw) can share it.

One row holds a JSON array of actions (:mod:`cachesync.codec`):

* ``kind='intent'``: written by the ORM hooks IN the application's transaction,
  holding what ``invalidates()`` declarations asked for; it exists only if the
  business change committed.
* ``kind='failed'``: written by the failure handler when Kafka is unreachable;
  the relay applies or publishes it later.

``state`` goes ``pending`` -> ``done`` (or ``dead`` after too many attempts).
The SQLAlchemy ``Table`` and the Django model mirror this definition exactly.
"""

from __future__ import annotations

__all__ = [
    "COLUMNS",
    "KIND_FAILED",
    "KIND_INTENT",
    "OUTBOX_TABLE",
    "STATE_DEAD",
    "STATE_DONE",
    "STATE_PENDING",
    "create_table_sql",
]

OUTBOX_TABLE = "cachesync_outbox"
KIND_INTENT = "intent"
KIND_FAILED = "failed"
STATE_PENDING = "pending"
STATE_DONE = "done"
STATE_DEAD = "dead"

#: Column names, in order: id, created_at, kind, state, payload, attempts, available_at, last_error.
COLUMNS = ("id", "created_at", "kind", "state", "payload", "attempts", "available_at", "last_error")


def create_table_sql(table: str = OUTBOX_TABLE, dialect: str = "mysql") -> str:
    """``CREATE TABLE IF NOT EXISTS`` for *dialect* (``mysql``, ``postgresql`` or ``sqlite``)."""
    if dialect == "mysql":
        return f"""CREATE TABLE IF NOT EXISTS `{table}` (
  `id` BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  `created_at` DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  `kind` VARCHAR(16) NOT NULL,
  `state` VARCHAR(16) NOT NULL DEFAULT 'pending',
  `payload` LONGTEXT NOT NULL,
  `attempts` INT NOT NULL DEFAULT 0,
  `available_at` DATETIME(6) NULL,
  `last_error` TEXT NULL,
  KEY `{table}_state_id` (`state`, `id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"""
    if dialect == "postgresql":
        return f"""CREATE TABLE IF NOT EXISTS "{table}" (
  "id" BIGSERIAL PRIMARY KEY,
  "created_at" TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP,
  "kind" VARCHAR(16) NOT NULL,
  "state" VARCHAR(16) NOT NULL DEFAULT 'pending',
  "payload" TEXT NOT NULL,
  "attempts" INTEGER NOT NULL DEFAULT 0,
  "available_at" TIMESTAMP(6) NULL,
  "last_error" TEXT NULL
)"""
    if dialect == "sqlite":
        return f"""CREATE TABLE IF NOT EXISTS "{table}" (
  "id" INTEGER PRIMARY KEY AUTOINCREMENT,
  "created_at" TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
  "kind" VARCHAR(16) NOT NULL,
  "state" VARCHAR(16) NOT NULL DEFAULT 'pending',
  "payload" TEXT NOT NULL,
  "attempts" INTEGER NOT NULL DEFAULT 0,
  "available_at" TIMESTAMP NULL,
  "last_error" TEXT NULL
)"""
    raise ValueError(f"no outbox DDL for dialect {dialect!r} (mysql, postgresql, sqlite)")
