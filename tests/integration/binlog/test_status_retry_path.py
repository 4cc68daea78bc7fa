"""``cachesync status`` reports the outbox backlog and the dead letters not yet redriven."""

from __future__ import annotations

import datetime as dt
import uuid

from cachesync import DeleteKeys, Settings
from cachesync.binlog.commands import _retry_path_status
from cachesync.connections import sql_engine
from cachesync.kafka.client import ensure_topics
from cachesync.kafka.codec import DeadLetter, ErrorInfo, RecordRef
from cachesync.kafka.dead_letter import DeadLetterPublisher
from cachesync.outbox import KIND_FAILED
from cachesync.outbox.relay import OutboxStore


def test_status_counts_outbox_rows_and_dead_letters(
    mysql_url: str, kafka_bootstrap: str, tmp_path: object
) -> None:
    outbox_url = f"sqlite:///{tmp_path}/outbox.db"
    store = OutboxStore(sql_engine(outbox_url))
    store.create_table()
    store.add(KIND_FAILED, [DeleteKeys(("a",))])
    store.add(KIND_FAILED, [DeleteKeys(("b",))])
    topic = f"status-{uuid.uuid4().hex[:8]}.dead-letter"
    ensure_topics(kafka_bootstrap, {topic: {}})
    publisher = DeadLetterPublisher(kafka_bootstrap, topic)
    letter = DeadLetter(
        "undecodable",
        ErrorInfo("DecodeError", "not JSON", False),
        dt.datetime.now(dt.UTC),
        RecordRef("cachesync.retry", 0, 5, None),
        None,
        b"k",
        b"\xff",
    )
    publisher.publish([letter, letter])
    publisher.close()
    settings = Settings(
        mysql_url=mysql_url,
        outbox_url=outbox_url,
        kafka_bootstrap=kafka_bootstrap,
        dead_letter_topic=topic,
    )
    found = _retry_path_status(settings)
    assert found["outbox"] == {"pending": 2, "done": 0, "dead": 0}
    assert found["dead_letters"] == 2


def test_status_says_why_when_the_retry_path_is_unreachable() -> None:
    found = _retry_path_status(
        Settings(outbox_url="mysql://root@127.0.0.1:9/none", kafka_bootstrap="127.0.0.1:9")
    )
    assert str(found["outbox"]).startswith("unavailable")
    assert str(found["dead_letters"]).startswith("unavailable")
    assert _retry_path_status(Settings()) == {
        "outbox": "not configured",
        "dead_letters": "not configured",
    }
