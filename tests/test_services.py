"""The private services used by the integration tests are up and configured as required."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pymysql
import pytest
import redis
from elasticsearch import ConflictError, Elasticsearch
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from tests.support import services as svc

pytestmark = pytest.mark.services


def _connect(url: str) -> pymysql.connections.Connection[pymysql.cursors.Cursor]:
    parts = urlsplit(url)
    return pymysql.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=parts.username or "root",
        password=parts.password or "",
        database=parts.path.lstrip("/") or None,
        connect_timeout=5,
    )


def test_mariadb_binlog_settings(mysql_url: str) -> None:
    conn = _connect(mysql_url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SHOW VARIABLES WHERE Variable_name IN "
                "('log_bin', 'binlog_format', 'binlog_row_image', 'binlog_row_metadata')"
            )
            settings = dict(cur.fetchall())
            cur.execute("SELECT DATABASE()")
            row = cur.fetchone()
    finally:
        conn.close()
    assert settings == {
        "log_bin": "ON",
        "binlog_format": "ROW",
        "binlog_row_image": "FULL",
        "binlog_row_metadata": "FULL",
    }
    assert row is not None and row[0] == "cachesync_test"


def test_mariadb_sidecar_user(sidecar_mysql_url: str) -> None:
    conn = _connect(sidecar_mysql_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW MASTER STATUS")
            status = cur.fetchone()
            cur.execute("SHOW BINARY LOGS")
            assert cur.fetchall()
            # least privilege: it can read but not write
            with pytest.raises(pymysql.err.OperationalError):
                cur.execute("CREATE TABLE sidecar_must_not_create (id INT PRIMARY KEY)")
    finally:
        conn.close()
    assert status is not None
    assert str(status[0]).startswith("mysql-bin.")
    assert int(status[1]) >= 4


def test_redis_ping(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ping() is True
    finally:
        client.close()


def test_kafka_round_trip(kafka_bootstrap: str) -> None:
    topic = f"services-test-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="services-test")
    try:
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        admin.close()

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    try:
        meta = producer.send(topic, key=b"k", value=b"hello").get(timeout=10)
    finally:
        producer.close()
    assert meta.topic == topic

    consumer = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        max_poll_interval_ms=6000,
    )
    try:
        tp = TopicPartition(topic, meta.partition)
        consumer.assign([tp])
        consumer.seek(tp, meta.offset)
        got = []
        deadline = time.monotonic() + 15
        while not got and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                got.extend(records)
    finally:
        consumer.close()
    assert [(r.key, r.value) for r in got] == [(b"k", b"hello")]


def test_elasticsearch_external_versions(es_url: str) -> None:
    es = Elasticsearch(es_url, request_timeout=10)
    index = f"services-test-{uuid.uuid4().hex[:8]}"
    try:
        assert es.info()["version"]["number"].startswith("8.")
        es.index(
            index=index,
            id="1",
            document={"n": 1},
            version=5,
            version_type="external",
            refresh=True,
        )
        doc = es.get(index=index, id="1")
        assert doc["_source"] == {"n": 1}
        assert doc["_version"] == 5
        with pytest.raises(ConflictError):
            es.index(index=index, id="1", document={"n": 0}, version=5, version_type="external")
    finally:
        es.options(ignore_status=404).indices.delete(index=index)
        es.close()


def test_throwaway_redis_kill_and_restart(tmp_path: Path) -> None:
    proc = svc.start_redis(svc.free_port(), tmp_path)
    try:
        client = redis.Redis.from_url(proc.url, socket_timeout=2, socket_connect_timeout=2)
        assert client.set("k", "v")
        old_pid = proc.pid
        proc.kill()
        assert not proc.is_alive()
        with pytest.raises(redis.ConnectionError):
            client.ping()
        proc.restart()
        assert proc.pid != old_pid
        assert client.ping() is True
        assert client.get("k") is None  # no persistence: a crash loses the data
        client.close()
    finally:
        proc.stop()
    assert not proc.is_alive()


def test_throwaway_broker_freeze_and_thaw() -> None:
    broker = svc.start_broker()
    try:
        broker.freeze()
        assert broker.is_frozen
        broker.thaw()
        assert not broker.is_frozen
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
        try:
            assert producer.send("t", b"x").get(timeout=10).offset == 0
        finally:
            producer.close()
    finally:
        broker.stop()
    assert not broker.is_alive()
