"""Declarations the benchmarked ``cachesync listen`` process imports (``--models bench.models``).

Read from the environment so one module serves every scenario:
``BENCH_SCHEMA`` (the database), ``BENCH_TABLES`` (how many watched tables,
``users_0`` .. ``users_{N-1}``) and ``BENCH_PROJECTION`` (``1``: each table
also has a search projection). Every table has two keys per row, by id and by
name, so an UPDATE that renames a row invalidates four keys.
"""

from __future__ import annotations

import os

from cachesync import Projection, Sync, default_registry, resolve
from cachesync.registry import TableSpec

COLUMNS = {"id": "id", "username": "user_name", "nickname": "nickname", "email": "email"}

DDL = (
    "CREATE TABLE {table} (id INT NOT NULL PRIMARY KEY, user_name VARCHAR(64) NOT NULL, "
    "nickname VARCHAR(64) NOT NULL, email VARCHAR(128) NULL) ENGINE=InnoDB"
)


def table_name(i: int) -> str:
    return f"users_{i}"


def index_name(schema: str, i: int) -> str:
    return f"{schema.lower()}-users-{i}"


def key_by_id(schema: str, i: int, row_id: int) -> str:
    return f"{schema}:u{i}:{row_id}"


def spec(schema: str, i: int, projection: bool) -> TableSpec:
    prefix = f"{schema}:u{i}:"
    search = (
        Projection(index=index_name(schema, i), fields=["username", "nickname", "email"])
        if projection
        else None
    )
    return resolve(
        f"bench.{schema}.User{i}",
        Sync(keys=[prefix + "{id}", prefix + "by-name:{username}"], search=search),
        table=table_name(i),
        schema=schema,
        columns=COLUMNS,
        primary_key=["id"],
    )


_SCHEMA = os.environ.get("BENCH_SCHEMA")
if _SCHEMA:
    for _i in range(int(os.environ.get("BENCH_TABLES", "1"))):
        default_registry.add(spec(_SCHEMA, _i, os.environ.get("BENCH_PROJECTION") == "1"))
