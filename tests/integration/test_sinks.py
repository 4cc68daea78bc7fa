"""RedisSink, SearchSink and Applier against the private Redis and Elasticsearch-API server."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import redis
from elasticsearch import Elasticsearch

from cachesync import (
    Applier,
    BinlogPosition,
    DeleteDoc,
    DeleteKeys,
    Failure,
    FailureHandler,
    HandOffError,
    ImmediateRetryPolicy,
    IndexDoc,
    Op,
    PermanentError,
    RowChange,
    Settings,
    TransientError,
    plan,
)
from cachesync.apply import hand_off
from cachesync.connections import elasticsearch_client, redis_client
from cachesync.sinks import RedisSink, SearchSink
from tests.support.services import start_redis
from tests.unit.models import user_spec


@pytest.fixture
def r(redis_url: str) -> redis.Redis:
    return redis_client(Settings(redis_url=redis_url))


@pytest.fixture
def es(es_url: str) -> Iterator[Elasticsearch]:
    client = elasticsearch_client(Settings(es_url=es_url))
    yield client
    client.close()


@pytest.fixture
def index(es: Elasticsearch) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    es.indices.create(
        index=name,
        mappings={
            "dynamic": "strict",
            "properties": {"username": {"type": "keyword"}, "nickname": {"type": "keyword"}},
        },
    )
    yield name
    es.indices.delete(index=name, ignore_unavailable=True)


def pos(n: int) -> BinlogPosition:
    return BinlogPosition("mysql-bin.000001", 1000 + n, 0)


def test_redis_sink_deletes_thousands_of_keys_in_one_round_trip(r: redis.Redis) -> None:
    prefix = uuid.uuid4().hex
    keys = [f"{prefix}:{i}" for i in range(2500)]
    r.mset({k: "v" for k in keys})
    sink = RedisSink(r)
    assert sink.delete([*keys, f"{prefix}:missing"]) == 2500
    assert r.exists(*keys) == 0


def test_redis_sink_groups_by_hash_slot_for_cluster(r: redis.Redis) -> None:
    sink = RedisSink(r, cluster=True, chunk=2)
    groups = sink._groups(["{a}1", "{a}2", "{a}3", "{b}1"])
    assert sorted(map(sorted, groups)) == [[b"{a}1", b"{a}2"], [b"{a}3"], [b"{b}1"]]
    r.mset({"{a}1": 1, "{b}1": 1})
    assert sink.delete(["{a}1", "{a}2", "{a}3", "{b}1"]) == 2


def test_external_versions_and_stale_write_counts_as_success(es: Elasticsearch, index: str) -> None:
    sink = SearchSink(es)
    assert sink.apply([IndexDoc(index, "1", {"username": "new"}, pos(5))]) == []
    stale = sink.apply(
        [
            IndexDoc(index, "1", {"username": "old"}, pos(3)),
            IndexDoc(index, "2", {"username": "two"}, pos(3)),
        ]
    )
    assert stale == []  # the 409 of doc 1 is a newer write winning, not a failure
    doc = es.get(index=index, id="1")
    assert doc["_source"] == {"username": "new"} and doc["_version"] == pos(5).version
    assert es.get(index=index, id="2")["_version"] == pos(3).version
    # equal version is stale too; delete of a missing document is success
    assert (
        sink.apply(
            [IndexDoc(index, "1", {"username": "same"}, pos(5)), DeleteDoc(index, "404", pos(9))]
        )
        == []
    )
    assert es.get(index=index, id="1")["_source"] == {"username": "new"}


def test_per_item_errors_are_reported_not_dropped(es: Elasticsearch, index: str) -> None:
    failures = SearchSink(es).apply(
        [
            IndexDoc(index, "ok", {"username": "fine"}, pos(1)),
            IndexDoc(index, "bad", {"unknown_field": 1}, pos(1)),  # dynamic: strict -> 400
        ]
    )
    assert [(f.action.doc_id, type(f.error)) for f in failures] == [("bad", PermanentError)]
    assert "bad" in str(failures[0].error) and "400" in str(failures[0].error)


def test_failures_match_their_actions_across_chunks_by_count_and_bytes(
    es: Elasticsearch, index: str
) -> None:
    """Each chunk's answers are matched to that chunk's actions by position: with requests
    of two documents (and, second pass, of one by size), only the rejected one fails."""
    docs = [IndexDoc(index, f"d{i}", {"username": f"u{i}"}, pos(1)) for i in range(5)]
    docs[3] = IndexDoc(index, "d3", {"unknown_field": 3}, pos(1))  # dynamic: strict -> 400
    for sink in (SearchSink(es, chunk_size=2), SearchSink(es, max_chunk_bytes=10)):
        failures = sink.apply(docs)
        assert [f.action.doc_id for f in failures] == ["d3"]
        assert isinstance(failures[0].error, PermanentError)
    for i in (0, 1, 2, 4):
        assert es.get(index=index, id=f"d{i}")["_source"] == {"username": f"u{i}"}


def test_documents_orjson_refuses_are_written_through_json(es: Elasticsearch, index: str) -> None:
    """Non-ASCII text reaches the server intact through orjson; what orjson refuses (an
    integer beyond 64 bits, a lone surrogate) is encoded as the client's json serialiser
    would, so the server sees what it saw before and decides."""
    text = {"username": "x" * 3, "nickname": "\u00e9\U0001f600"}
    assert SearchSink(es).apply([IndexDoc(index, "utf8", text, pos(1))]) == []
    assert es.get(index=index, id="utf8")["_source"] == text
    from cachesync.sinks.elasticsearch import _json

    assert _json({"n": 2**70}) == b'{"n":1180591620717411303424}'
    assert _json({"s": "\ud800"}) == '{"s":"\ud800"}'.encode("utf-8", "surrogatepass")


def test_document_deleted_when_the_condition_turns_false(
    es: Elasticsearch, index: str, r: redis.Redis
) -> None:
    spec = user_spec(index=index)
    applier = Applier(RedisSink(r), SearchSink(es))
    live = {"id": 7, "user_name": "ann", "nickname": "A", "email": None, "state": 0}
    applier.apply(plan(RowChange(Op.INSERT, "db", "users", None, live, pos(1)), spec))
    assert es.get(index=index, id="7")["_source"] == {"username": "ann", "nickname": "A"}
    archived = {**live, "state": 1}
    applier.apply(plan(RowChange(Op.UPDATE, "db", "users", live, archived, pos(2)), spec))
    assert not es.exists(index=index, id="7")


def test_redis_down_during_apply_hands_every_key_off(tmp_path: Any) -> None:
    server = start_redis(dir=str(tmp_path))
    try:
        client = redis_client(
            Settings(redis_url=server.url, redis_socket_timeout=0.5, redis_connect_timeout=0.5)
        )
        applier = Applier(
            RedisSink(client),
            None,
            policy=ImmediateRetryPolicy(attempts=3, min_wait=0.01, max_wait=0.02),
        )
        client.set("k1", 1)
        server.kill()
        started = time.monotonic()
        report = applier.apply([DeleteKeys(("k1", "k2"), pos(1)), DeleteKeys(("k2", "k3"), pos(2))])
        elapsed = time.monotonic() - started
        assert elapsed < 5, f"a dead Redis held the applier for {elapsed:.1f}s"
        assert [(f.action, type(f.error)) for f in report.failures] == [
            (DeleteKeys(("k1",), pos(1)), TransientError),
            (DeleteKeys(("k2",), pos(2)), TransientError),
            (DeleteKeys(("k3",), pos(2)), TransientError),
        ]
        server.restart()
        assert applier.apply([DeleteKeys(("k1",))]).keys_deleted == 1
    finally:
        server.stop()


def test_elasticsearch_unreachable_is_transient_and_handed_off() -> None:
    es = elasticsearch_client(Settings(es_url="http://127.0.0.1:9", es_timeout=1))
    applier = Applier(
        None,
        SearchSink(es),
        policy=ImmediateRetryPolicy(attempts=2, min_wait=0.01, max_wait=0.01),
    )
    report = applier.apply([IndexDoc("i", "1", {}, pos(1)), DeleteDoc("i", "2", pos(1))])
    assert [type(f.error) for f in report.failures] == [TransientError, TransientError]


def test_a_handler_that_cannot_store_stops_the_caller(r: redis.Redis) -> None:
    class Refuses(FailureHandler):
        def handle(self, failures: Sequence[Failure]) -> None:
            raise HandOffError("nowhere to put them")

    dead = redis_client(Settings(redis_url="redis://127.0.0.1:9/0", redis_connect_timeout=0.2))
    applier = Applier(RedisSink(dead), None, policy=ImmediateRetryPolicy.NONE)
    with pytest.raises(HandOffError):
        hand_off(applier.apply([DeleteKeys(("a",))]), Refuses())


def test_a_key_with_undecodable_bytes_is_deleted_byte_exactly(r: redis.Redis) -> None:
    """A VARBINARY key value that is not UTF-8 must neither crash the sink nor miss its key."""
    from cachesync.keys import KeyTemplate

    raw = b"\xff\xfe" + uuid.uuid4().hex.encode()
    key = KeyTemplate.parse("blob:{v}").render({"v": raw})
    assert key is not None
    r.set(b"blob:" + raw, b"cached")
    r.set("plain:1", b"cached")
    report = Applier(RedisSink(r), None).apply([DeleteKeys((key, "plain:1"), pos(1))])
    assert report.failures == [] and report.keys_deleted == 2
    assert not r.exists(b"blob:" + raw) and not r.exists("plain:1")
