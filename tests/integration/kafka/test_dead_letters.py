"""Poison records and permanent failures: dead-lettered with context, partition flowing, redrive."""

from __future__ import annotations

import datetime as dt
import io
import json
from contextlib import redirect_stdout

import pytest
import redis
from elasticsearch import Elasticsearch
from kafka import KafkaProducer

from cachesync import Failure, IndexDoc, Registry, TransientError, cli, metrics
from cachesync.actions import per_key as split_action
from cachesync.kafka import RetryQueue, list_dead_letters, redrive
from cachesync.sinks import RedisSink, SearchSink
from tests.integration.kafka.helpers import Items, running_consumer, wait_until

pytestmark = pytest.mark.services


def run_cli(*argv: str) -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli.main(list(argv)) == 0
    return out.getvalue()


def test_poison_and_permanent_failures_are_dead_lettered_and_redriven_after_the_fix(
    kafka_bootstrap: str,
    topics: tuple[str, str],
    items: Items,
    mysql_url: str,
    r: redis.Redis,
    redis_sink: RedisSink,
    es: Elasticsearch,
) -> None:
    retry, dead = topics
    before = metrics.snapshot()
    other = Items(mysql_url, items.index)  # a model this consumer was not started with
    strict_index = items.index + "-strict"  # its mapping lacks a field the projection sends
    es.indices.create(
        index=strict_index,
        mappings={"dynamic": "strict", "properties": {"name": {"type": "keyword"}}},
    )
    strict = Items(mysql_url, strict_index)
    try:
        # 1. a record no cachesync can decode (a producer bug) comes first in the partition
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        producer.send(retry, key=b"poison", value=b"\x00\x01 not a retry message").get(10)
        producer.close()
        queue = RetryQueue(kafka_bootstrap, retry, component="sidecar")
        # 2. a document for a table the consumer's models do not declare (permanent: config)
        foreign = [a for a in other.plan(other.insert(1, "x")) if isinstance(a, IndexDoc)]
        # 3. a document the index mapping rejects (permanent: a strict mapping, a new field)
        rejected = [a for a in strict.plan(strict.insert(1, "strict")) if isinstance(a, IndexDoc)]
        # 4. then ordinary work on the same partition, which must keep flowing
        fine = []
        for pk in range(2, 12):
            fine += items.plan(items.insert(pk, str(pk), score=pk))
        records = len([b for a in fine for b in split_action(a)])  # one record per cache key
        queue.handle([Failure(a, TransientError("down")) for a in foreign + rejected + fine])
        queue.close()
        r.mset({k: "stale" for k in items.touched})
        registry = Registry()
        registry.add(items.spec)
        registry.add(strict.spec)
        search = SearchSink(es, refresh=True)
        with running_consumer(
            kafka_bootstrap,
            topic=retry,
            dead_letter_topic=dead,
            redis=redis_sink,
            search=search,
            items=items,
            registry=registry,
        ) as consumer:
            wait_until("dead letters", lambda: consumer.stats.dead_lettered == 3, 20)
            wait_until("the rest applied", lambda: consumer.stats.applied == records, 20)
            # the partition flowed past all three: every other key is gone, its documents written
            assert r.exists(*items.touched) == 0

            letters = {s.key: s for s in list_dead_letters(kafka_bootstrap, dead)}
            assert set(letters) == {"poison", f"{items.index}/1", f"{strict_index}/1"}
            poison = letters["poison"].letter
            assert poison is not None and poison.reason == "undecodable"
            assert poison.raw_value == b"\x00\x01 not a retry message" and poison.source.offset == 0
            assert all(
                s.letter is not None and s.letter.reason == "permanent"
                for k, s in letters.items()
                if k != "poison"
            )
            listed = run_cli(
                "dlq",
                "list",
                "--kafka-bootstrap",
                kafka_bootstrap,
                "--dead-letter-topic",
                dead,
            )
            assert (
                "3 dead letter(s)" in listed and "undecodable" in listed and "permanent" in listed
            )
            as_json = [
                json.loads(line)
                for line in run_cli(
                    "dlq",
                    "list",
                    "--json",
                    "--kafka-bootstrap",
                    kafka_bootstrap,
                    "--dead-letter-topic",
                    dead,
                    "--key",
                    "items-*",
                ).splitlines()
            ]
            assert len(as_json) == 2 and {j["attempts"] for j in as_json} == {2}
            assert any("no model declares table" in j["error"] for j in as_json)
            assert any("400" in j["error"] for j in as_json)

            # the fixes: the consumer learns the other model, the mapping is corrected
            registry.add(other.spec)
            es.indices.put_mapping(index=strict_index, properties={"score": {"type": "integer"}})
            since = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)).isoformat()
            printed = run_cli(
                "dlq",
                "redrive",
                "--kafka-bootstrap",
                kafka_bootstrap,
                "--dead-letter-topic",
                dead,
                "--retry-topic",
                retry,
                "--since",
                since,
            )
            assert "redrove 2 dead letter(s)" in printed and "undecodable 1 (skipped)" in printed
            wait_until(
                "redriven letters applied", lambda: consumer.stats.applied == records + 2, 20
            )
            again = redrive(kafka_bootstrap, dead_letter_topic=dead, retry_topic=retry)
            assert (again.redriven, again.already_redriven, again.undecodable) == (0, 2, 1)
            assert consumer.stats.dead_lettered == 3
        after = metrics.snapshot()
        assert after["dead_letters_total"] - before["dead_letters_total"] == 3
        assert after["redriven_total"] - before["redriven_total"] == 2
        assert after["retry_succeeded_total"] - before["retry_succeeded_total"] == records + 2
        assert es.get(index=strict_index, id="1")["_source"] == {"name": "strict", "score": 0}
        assert es.get(index=items.index, id="1")["_source"] == {"name": "x", "score": 0}
        marked = {s.key: s.redriven_at for s in list_dead_letters(kafka_bootstrap, dead)}
        assert marked["poison"] is None and all(
            v is not None for k, v in marked.items() if k != "poison"
        )
    finally:
        other.drop()
        strict.drop()
        es.indices.delete(index=strict_index, ignore_unavailable=True)
