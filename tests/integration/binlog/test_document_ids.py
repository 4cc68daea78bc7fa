"""Default document ids of composite primary keys are injective (real sidecar and ES-API)."""

from __future__ import annotations

import pytest

from cachesync import Projection, Registry, Sync, resolve
from tests.integration.binlog import models
from tests.integration.binlog.harness import BinlogEnv, running, wait_for

pytestmark = pytest.mark.services


def test_composite_keys_with_colons_get_one_document_per_row(binlog_env: BinlogEnv) -> None:
    env = binlog_env
    env.sql(
        "CREATE TABLE pairs (a VARCHAR(16) NOT NULL, b VARCHAR(16) NOT NULL, label VARCHAR(16),"
        " PRIMARY KEY (a, b)) ENGINE=InnoDB"
    )
    index = f"{env.schema.lower()}-pairs"
    pairs = resolve(
        f"tests.binlog.{env.schema}.Pair",
        Sync(search=Projection(index=index, fields=["label"])),
        table="pairs",
        schema=env.schema,
        columns={"a": "a", "b": "b", "label": "label"},
        primary_key=["a", "b"],
    )
    registry = Registry()
    registry.add(models.user_spec(env.schema))
    registry.add(pairs)
    rows = [("a", "b:c", "one"), ("a:b", "c", "two"), ("a\\", ":c", "three"), ("a\\:", "c", "four")]

    def documents() -> dict[str, dict[str, object]]:
        env.es.indices.refresh(index=index, ignore_unavailable=True)
        found = env.es.search(
            index=index, query={"match_all": {}}, size=100, ignore_unavailable=True
        )
        return {hit["_id"]: hit["_source"] for hit in found["hits"]["hits"]}

    try:
        with running(env.sidecar(registry=registry)):
            with env.connect() as conn, conn.cursor() as cur:
                cur.executemany("INSERT INTO pairs VALUES (%s, %s, %s)", rows)
            env.sync_point()
            wait_for(lambda: len(documents()) == 4, 20, "four documents")
            assert sorted(d["label"] for d in documents().values()) == [
                "four",
                "one",
                "three",
                "two",
            ]
            env.sql("DELETE FROM pairs WHERE a = 'a' AND b = 'b:c'")
            env.sync_point()
            wait_for(lambda: len(documents()) == 3, 20, "the deleted row's document gone")
            assert sorted(d["label"] for d in documents().values()) == ["four", "three", "two"]
    finally:
        env.es.indices.delete(index=index, ignore_unavailable=True)
