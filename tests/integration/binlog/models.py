"""ORM-neutral declarations of the binlog tests' ``users`` table.

Each test works in a database of its own; :func:`user_spec` builds the
declaration for one such schema. Imported with ``--models
tests.integration.binlog.models`` by a subprocess sidecar, the module registers
the schema named by ``CACHESYNC_TEST_SCHEMA`` into ``default_registry``.
"""

from __future__ import annotations

import os

from cachesync import Projection, Registry, Sync, default_registry, resolve
from cachesync.registry import TableSpec

USER_COLUMNS = {
    "id": "id",
    "username": "user_name",  # attribute != column
    "nickname": "nickname",
    "email": "email",
    "state": "state",
}

USERS_DDL = """CREATE TABLE users (
    id INT NOT NULL PRIMARY KEY,
    user_name VARCHAR(64) NOT NULL,
    nickname VARCHAR(64) NOT NULL,
    email VARCHAR(128) NULL,
    state TINYINT NOT NULL DEFAULT 0
) ENGINE=InnoDB"""

DOC_FIELDS = ("username", "nickname", "email")


def index_name(schema: str) -> str:
    return f"{schema.lower()}-users"


def key_prefix(schema: str) -> str:
    return f"{schema}:"


def user_spec(schema: str) -> TableSpec:
    """``users`` in *schema*: two cache keys and a conditional projection."""
    prefix = key_prefix(schema)
    sync = Sync(
        keys=[prefix + "user:{id}", prefix + "user:by-name:{username}"],
        search=Projection(
            index=index_name(schema),
            fields=list(DOC_FIELDS),
            when=lambda row: row["state"] == 0,
        ),
    )
    return resolve(
        f"tests.binlog.{schema}.User",
        sync,
        table="users",
        schema=schema,
        columns=USER_COLUMNS,
        primary_key=["id"],
    )


def registry_for(schema: str) -> Registry:
    registry = Registry()
    registry.add(user_spec(schema))
    return registry


def user_keys(schema: str, user_id: int, username: str) -> list[str]:
    prefix = key_prefix(schema)
    return [f"{prefix}user:{user_id}", f"{prefix}user:by-name:{username}"]


_SCHEMA = os.environ.get("CACHESYNC_TEST_SCHEMA")
if _SCHEMA:
    default_registry.add(user_spec(_SCHEMA))
