"""One bad row costs one dead letter, never the stream (real MariaDB, Redis, ES-API, sidecar).

Each test makes a few rows poison among ordinary ones, runs the sidecar, and
checks that every ordinary change is applied, the sidecar is still streaming,
and the poison rows wait in the database dead-letter store with their context,
ready to be redriven once the cause is fixed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cachesync import Projection, Registry, Sync, resolve
from cachesync.binlog.sidecar import default_failure_handler
from cachesync.config import Settings
from cachesync.outbox import STATE_DEAD, STATE_DONE, OutboxRelay, OutboxStore
from cachesync.outbox.dead_letters import (
    OutboxDeadLetterStore,
    list_outbox_dead_letters,
    redrive_outbox,
)
from cachesync.reread import Refresher, SqlRowReader
from cachesync.sinks import RedisSink, SearchSink
from tests.integration.binlog import models
from tests.integration.binlog.harness import BinlogEnv, running, wait_for

pytestmark = pytest.mark.services


@pytest.fixture
def outbox(binlog_env: BinlogEnv) -> Iterator[OutboxStore]:
    store = OutboxStore.from_url(binlog_env.root_url)
    store.create_table()
    yield store
    store.engine.dispose()


def _spec(env: BinlogEnv, when: Any) -> Any:
    """The test ``users`` declaration with another ``when=``."""
    base = models.user_spec(env.schema)
    sync = Sync(
        keys=[t.text for t in base.key_templates],
        search=Projection(index=env.index, fields=list(models.DOC_FIELDS), when=when),
    )
    return resolve(
        base.model, sync, table="users", schema=env.schema, columns=base.columns, primary_key=["id"]
    )


def _registry(*specs: Any) -> Registry:
    registry = Registry()
    for spec in specs:
        registry.add(spec)
    return registry


def _poisoned_when(row: dict[str, Any]) -> bool:
    if row["nickname"] == "poison":
        raise ZeroDivisionError("a user callable that breaks on one odd row")
    return bool(row["state"] == 0)


def test_a_raising_callable_costs_one_dead_letter_per_row_and_the_stream_goes_on(
    binlog_env: BinlogEnv, outbox: OutboxStore
) -> None:
    env = binlog_env
    registry = _registry(_spec(env, _poisoned_when))
    ordinary = [i for i in range(1, 101)]
    poison = [1001, 1002, 1003]
    keys = [k for i in ordinary for k in env.keys(i, f"u{i}")]
    poison_keys = [k for i in poison for k in env.keys(i, f"p{i}")]
    sidecar = env.sidecar(registry=registry)
    sidecar.dead_letters = OutboxDeadLetterStore(outbox)
    with running(sidecar) as errors:
        env.set_keys(keys + poison_keys)
        for i in ordinary[:50]:
            env.sql(f"INSERT INTO users VALUES ({i}, 'u{i}', 'n{i}', NULL, 0)")
        env.sql("INSERT INTO users VALUES (1001, 'p1001', 'poison', NULL, 0)")
        # poison and ordinary rows in ONE statement, hence one binlog event
        values = ", ".join(f"({i}, 'u{i}', 'n{i}', NULL, 0)" for i in ordinary[50:])
        env.sql(f"INSERT INTO users VALUES {values}, (1002, 'p1002', 'poison', NULL, 0)")
        env.transaction(["INSERT INTO users VALUES (1003, 'p1003', 'poison', NULL, 0)"])
        env.sync_point()
        assert not errors and sidecar.leading.is_set(), "the sidecar stopped on a poison row"
        assert env.existing(keys) == [], "ordinary changes were held up by a poison row"
        assert env.existing(poison_keys) == [], "a poison row's renderable keys must still go"
        documents = env.documents()
        assert all(str(i) in documents for i in ordinary)
        assert not any(str(i) in documents for i in poison)

        dead = outbox.rows(STATE_DEAD)
        assert len(dead) == 3 and {r["kind"] for r in dead} == {"change"}
        letters = [json.loads(r["payload"]) for r in dead]
        assert sorted(letter["primary_key"]["id"] for letter in letters) == poison
        first = letters[0]
        assert "ZeroDivisionError" in first["error"] and first["model"].endswith(".User")
        assert first["change"]["table"] == "users" and first["change"]["position"]
        assert first["change"]["after"]["nickname"] == "poison"
        listed = list_outbox_dead_letters(outbox)
        assert [line["reason"] for line in listed] == ["poison"] * 3
        assert all("users" in line["key"] for line in listed)

        # a later change of the same table still streams
        env.set_keys(env.keys(5, "u5"))
        env.sql("UPDATE users SET nickname = 'later' WHERE id = 5")
        env.sync_point()
        assert env.existing(env.keys(5, "u5")) == []

    # The callable is fixed: a redrive plans the stored changes with the current
    # declarations, and the relay applies them (documents re-read from the table).
    fixed = _registry(_spec(env, lambda row: row["state"] == 0))
    report = redrive_outbox(outbox, fixed)
    assert (report.matched, report.redriven, report.still_poison) == (3, 3, 0)
    assert redrive_outbox(outbox, fixed).matched == 0  # idempotent
    relay = OutboxRelay(
        outbox,
        redis=RedisSink(env.redis),
        search=SearchSink(env.es),
        refresher=Refresher(SqlRowReader(outbox.engine), fixed),
    )
    while relay.run_once().claimed:
        pass
    assert {r["kind"] for r in outbox.rows(STATE_DONE)} >= {"change", "failed"}
    env.assert_index_matches_table()


BLOBS_DDL = (
    "CREATE TABLE blobs (id INT NOT NULL PRIMARY KEY, code VARBINARY(16) NOT NULL) ENGINE=InnoDB"
)


def test_a_key_column_with_invalid_utf8_is_invalidated_byte_exactly(binlog_env: BinlogEnv) -> None:
    """VARBINARY values that are not UTF-8 among ordinary ones: every key is deleted, none stops the stream."""
    env = binlog_env
    env.sql(BLOBS_DDL)
    prefix = models.key_prefix(env.schema)
    blobs = resolve(
        f"tests.binlog.{env.schema}.Blob",
        Sync(keys=[prefix + "blob:{code}"]),
        table="blobs",
        schema=env.schema,
        columns={"id": "id", "code": "code"},
        primary_key=["id"],
    )
    registry = _registry(models.user_spec(env.schema), blobs)
    raw = [f"c{i:03d}".encode() for i in range(100)] + [b"\xff\xfe", b"ok\xc3(", b"\x80"]
    wire = [prefix.encode() + b"blob:" + code for code in raw]
    with running(env.sidecar(registry=registry)) as errors:
        pipe = env.redis.pipeline(transaction=False)
        for key in wire:
            pipe.set(key, b"stale")
        pipe.execute()
        with env.connect() as conn, conn.cursor() as cur:
            for i, code in enumerate(raw):
                cur.execute("INSERT INTO blobs VALUES (%s, %s)", (i, code))
        env.sync_point()
        assert not errors
        left = [k for k in wire if env.redis.exists(k)]
        assert left == [], f"{len(left)} of {len(wire)} keys still cached: {left[:5]}"


def _rejecting_spec(env: BinlogEnv) -> Any:
    """Rows whose email starts with 'bad' get a field the strict mapping does not know."""
    base = models.user_spec(env.schema)

    def document(row: dict[str, Any]) -> dict[str, Any]:
        body = {"username": row["username"], "nickname": row["nickname"]}
        if (row["email"] or "").startswith("bad"):
            body["extra"] = row["email"]
        return body

    sync = Sync(
        keys=[t.text for t in base.key_templates],
        search=Projection(index=env.index, to_document=document),
    )
    return resolve(
        base.model, sync, table="users", schema=env.schema, columns=base.columns, primary_key=["id"]
    )


def test_without_kafka_rejected_documents_are_dead_letters_and_the_rest_flows(
    binlog_env: BinlogEnv, outbox: OutboxStore
) -> None:
    env = binlog_env
    env.es.indices.create(
        index=env.index,
        mappings={
            "dynamic": "strict",
            "properties": {"username": {"type": "keyword"}, "nickname": {"type": "keyword"}},
        },
    )
    registry = _registry(_rejecting_spec(env))
    handler = default_failure_handler(Settings(mysql_url=env.root_url))  # no kafka_bootstrap
    bad = set(range(1, 101, 5))  # 20 of 100
    keys = [k for i in range(1, 101) for k in env.keys(i, f"u{i}")]
    with running(env.sidecar(registry=registry, on_failure=handler)) as errors:
        env.set_keys(keys)
        started = time.monotonic()
        for i in range(1, 101):
            email = f"'bad{i}@x'" if i in bad else "NULL"
            env.sql(f"INSERT INTO users VALUES ({i}, 'u{i}', 'n{i}', {email}, 0)")
        wait_for(lambda: not env.existing(keys), 30, "every key deleted")
        wait_for(lambda: len(env.documents()) >= 80, 30, "the 80 good documents")
        elapsed = time.monotonic() - started
        print(
            f"\n100 changes with 20 rejected documents, no Kafka: keys and documents in {elapsed:.1f}s"
        )
        documents = env.documents()
        assert {int(i) for i in documents} == set(range(1, 101)) - bad

        def dead_ids() -> list[int]:
            return sorted(
                int(a["id"]) for r in outbox.rows(STATE_DEAD) for a in json.loads(r["payload"])
            )

        # the hand-off follows the bulk request: wait for it, then count exactly
        wait_for(lambda: len(dead_ids()) >= len(bad), 30, "the rejected documents' dead letters")
        dead = outbox.rows(STATE_DEAD)
        ids = dead_ids()
        assert ids == sorted(bad), "each rejected document is exactly one dead letter"
        assert all("400" in (r["last_error"] or "") for r in dead)
        env.sync_point()  # a later change still applied
        assert not errors

    # The mapping is fixed: redrive, and the relay indexes the rows as they are now.
    env.es.indices.put_mapping(index=env.index, properties={"extra": {"type": "keyword"}})
    report = redrive_outbox(outbox, registry)
    assert report.redriven == len(dead)
    relay = OutboxRelay(
        outbox,
        redis=RedisSink(env.redis),
        search=SearchSink(env.es),
        refresher=Refresher(SqlRowReader(outbox.engine), registry),
    )
    while relay.run_once().claimed:
        pass
    documents = env.documents()
    assert {int(i) for i in documents} == {0} | set(range(1, 101))
    assert documents["1"]["extra"] == "bad1@x"
