"""OutboxRelay on SQLite (the change source without a binlog) and on the private MariaDB."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from elasticsearch import Elasticsearch

from cachesync import (
    BinlogPosition,
    DeleteKeys,
    OutboxPosition,
    Projection,
    Registry,
    RetryPolicy,
    Sync,
    resolve,
)
from cachesync.codec import encode_action
from cachesync.connections import sql_engine
from cachesync.kafka import RetryQueue, decode_message
from cachesync.kafka.client import read_topic
from cachesync.outbox import (
    KIND_FAILED,
    KIND_INTENT,
    STATE_DEAD,
    STATE_DONE,
    STATE_PENDING,
    OutboxRelay,
    OutboxStore,
)
from cachesync.policies import RelayPolicy
from cachesync.reread import Refresher, SqlRowReader
from cachesync.sinks import RedisSink, SearchSink
from tests.integration.kafka.helpers import create_index, create_topics, unique
from tests.support.services import start_redis

pytestmark = pytest.mark.services

QUICK = RetryPolicy(attempts=3, min_backoff=0.2, max_backoff=0.5, jitter=0.0)
RELAY = RelayPolicy(retry=QUICK)


@pytest.fixture
def es(es_url: str) -> Iterator[Elasticsearch]:
    client = Elasticsearch(es_url, request_timeout=10)
    yield client
    client.close()


@pytest.fixture
def index(es: Elasticsearch) -> Iterator[str]:
    name = unique("outbox")
    create_index(es, name)
    yield name
    es.indices.delete(index=name, ignore_unavailable=True)


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    yield client
    client.close()


@pytest.fixture
def mysql_outbox(mysql_url: str) -> Iterator[OutboxStore]:
    store = OutboxStore.from_url(mysql_url, table=f"outbox_{unique('t').replace('-', '_')}")
    store.create_table()
    yield store
    with store.engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS `{store.name}`")
    store.engine.dispose()


def test_sqlite_outbox_alone_keeps_cache_and_index_in_sync(
    tmp_path: Path, index: str, r: redis.Redis, es: Elasticsearch
) -> None:
    """No binlog: intents written in the application's transactions are the change source."""
    engine = sql_engine(f"sqlite:///{tmp_path / 'app.db'}")
    store = OutboxStore(engine)
    store.create_table()
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE notes (id INTEGER PRIMARY KEY, name TEXT NOT NULL, state INTEGER NOT NULL)"
        )
    tag = unique("n")
    spec = resolve(
        "tests.Note",
        Sync(
            keys=[f"{tag}:{{id}}"],
            search=Projection(index=index, fields=["name"], when=lambda row: row["state"] == 0),
        ),
        table="notes",
        columns={"id": "id", "name": "name", "state": "state"},
        primary_key=["id"],
    )
    registry = Registry()
    registry.add(spec)
    notes = sa.table("notes", sa.column("id"), sa.column("name"), sa.column("state"))

    def write(statement: sa.Executable, pk: int, name: str) -> None:
        """The application's transaction: the business write, then its outbox row, last."""
        payload = [
            encode_action(DeleteKeys((f"{tag}:{pk}",))),
            {  # a document intent: the writer cannot know its version inside the transaction
                "v": 1,
                "type": "index_doc",
                "index": index,
                "id": str(pk),
                "document": {"name": name},
                "position": None,
                "source": {"schema": None, "table": "notes", "pk": {"id": pk}},
            },
        ]
        with engine.begin() as conn:
            conn.execute(statement)
            conn.execute(
                store.table.insert().values(
                    kind=KIND_INTENT, state=STATE_PENDING, payload=json.dumps(payload), attempts=0
                )
            )

    relay = OutboxRelay(
        store,
        redis=RedisSink(r),
        search=SearchSink(es, refresh=True),
        refresher=Refresher(SqlRowReader(engine), registry),
        policy=RELAY,
    )
    write(notes.insert().values(id=1, name="first", state=0), 1, "first")
    write(notes.insert().values(id=2, name="second", state=0), 2, "second")
    # a rolled-back transaction leaves neither the row nor its intent
    with pytest.raises(RuntimeError), engine.begin() as conn:
        conn.execute(notes.insert().values(id=3, name="ghost", state=0))
        raise RuntimeError("rollback")
    r.mset({f"{tag}:1": "cached", f"{tag}:2": "cached"})
    report = relay.run_once()
    assert (report.claimed, report.done) == (2, 2)
    assert r.exists(f"{tag}:1", f"{tag}:2") == 0
    doc = es.get(index=index, id="1")
    assert doc["_source"] == {"name": "first"}
    assert doc["_version"] == OutboxPosition(1, 1).version  # the row's own position

    # the intent's content is stale (written before a later change it did not see): the
    # relay indexes the row as it is now
    write(notes.update().where(notes.c.id == 1).values(name="renamed"), 1, "stale name")
    write(notes.update().where(notes.c.id == 2).values(state=1), 2, "second")  # leaves `when`
    r.set(f"{tag}:1", "cached")
    assert relay.run_once().done == 2
    assert es.get(index=index, id="1")["_source"] == {"name": "renamed"}
    assert not es.exists(index=index, id="2")
    assert r.exists(f"{tag}:1") == 0
    write(notes.delete().where(notes.c.id == 1), 1, "renamed")
    assert relay.run_once().done == 1
    assert not es.exists(index=index, id="1")
    assert relay.run_once().claimed == 0
    assert store.counts() == {STATE_PENDING: 0, STATE_DONE: 5, STATE_DEAD: 0}
    engine.dispose()


class CountingRedis(RedisSink):
    def __init__(self, client: redis.Redis) -> None:
        super().__init__(client)
        self.keys: list[str] = []
        self.lock = threading.Lock()

    def delete(self, keys: Sequence[str]) -> int:
        n = super().delete(keys)
        with self.lock:
            self.keys.extend(keys)
        return n


def test_two_relays_share_a_mariadb_outbox_without_double_work(
    mysql_outbox: OutboxStore, r: redis.Redis
) -> None:
    tag = unique("k")
    for i in range(300):
        mysql_outbox.add(
            KIND_FAILED, [DeleteKeys((f"{tag}:{i}",), BinlogPosition("mysql-bin.000001", 4 + i))]
        )
    sink = CountingRedis(r)
    relays = [
        OutboxRelay(
            mysql_outbox, redis=sink, search=None, policy=RelayPolicy(batch_size=20, retry=QUICK)
        )
        for _ in range(2)
    ]
    with mysql_outbox.engine.connect() as conn:
        assert mysql_outbox.supports_skip_locked(conn)  # MariaDB 10.6+
    done = [0, 0]

    def drain(n: int) -> None:
        while True:
            report = relays[n].run_once()
            done[n] += report.done
            if report.claimed == 0:
                return

    threads = [threading.Thread(target=drain, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(done) == 300, done
    assert sorted(sink.keys) == sorted(f"{tag}:{i}" for i in range(300))  # each exactly once
    assert mysql_outbox.counts()[STATE_DONE] == 300


def test_relay_waits_out_a_redis_outage_without_kafka(
    mysql_outbox: OutboxStore, tmp_path: Path
) -> None:
    proc = start_redis(dir=tmp_path)
    client = redis.Redis.from_url(proc.url, socket_timeout=1, socket_connect_timeout=1)
    try:
        client.set("k:1", "cached")
        row = mysql_outbox.add(KIND_FAILED, [DeleteKeys(("k:1",))], attempts=1)
        relay = OutboxRelay(mysql_outbox, redis=RedisSink(client), search=None, policy=RELAY)
        proc.stop()
        report = relay.run_once()
        assert (report.done, report.deferred, report.dead) == (0, 1, 0)
        (stored,) = mysql_outbox.rows()
        assert stored["id"] == row and stored["state"] == STATE_PENDING and stored["attempts"] == 2
        assert "Redis" in stored["last_error"] and stored["available_at"] is not None
        assert relay.run_once().claimed == 0  # not before available_at
        proc.start()
        client.set("k:1", "cached")  # a value written while the invalidation waited
        time.sleep(QUICK.max_backoff + 0.1)
        assert relay.run_once().done == 1
        assert client.exists("k:1") == 0
    finally:
        client.close()
        proc.stop()


def test_relay_hands_failures_to_kafka_and_buries_undecodable_rows(
    mysql_outbox: OutboxStore, kafka_bootstrap: str, tmp_path: Path
) -> None:
    topic = unique("retry")
    create_topics(kafka_bootstrap, topic)
    proc = start_redis(dir=tmp_path)
    client = redis.Redis.from_url(proc.url, socket_timeout=1, socket_connect_timeout=1)
    proc.stop()
    handoff = RetryQueue(kafka_bootstrap, topic, component="relay")
    try:
        mysql_outbox.add(KIND_FAILED, [DeleteKeys(("k:1", "k:2"))])
        with mysql_outbox.engine.begin() as conn:
            conn.execute(
                mysql_outbox.table.insert().values(
                    kind=KIND_INTENT, state=STATE_PENDING, payload="{not json", attempts=0
                )
            )
        relay = OutboxRelay(
            mysql_outbox, redis=RedisSink(client), search=None, handoff=handoff, policy=RELAY
        )
        report = relay.run_once()
        assert (report.done, report.dead, report.handed_off) == (1, 1, 2)
        states = [row["state"] for row in mysql_outbox.rows()]
        assert states == [STATE_DONE, STATE_DEAD]
        messages = [decode_message(rec.value) for rec in read_topic(kafka_bootstrap, topic)]
        assert sorted(m.key for m in messages) == ["k:1", "k:2"]
        assert {m.origin["component"] for m in messages} == {"relay"}
    finally:
        handoff.close()
        client.close()
