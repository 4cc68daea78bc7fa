"""One contract, two implementations: the in-memory twins of :mod:`cachesync.testing`
and the real sinks against the private Redis and Elasticsearch-API server.

Every case runs on both. When a twin drifts from the service it stands in for,
the case fails on one side only; the real service is the one that proves the
guarantee (the twins only have to agree with it).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from elasticsearch import Elasticsearch

from cachesync import (
    Applier,
    BinlogPosition,
    DeleteDoc,
    DeleteKeys,
    IndexDoc,
    PermanentError,
    Settings,
    TransientError,
)
from cachesync.connections import elasticsearch_client, redis_client
from cachesync.sinks import DocumentSink, KeySink, RedisSink, SearchSink
from cachesync.testing import MemoryDocumentSink, MemoryKeySink


def pos(n: int) -> BinlogPosition:
    return BinlogPosition("mysql-bin.000001", n)


@dataclass
class Keys:
    """A key sink plus what the test needs to look behind it."""

    sink: KeySink
    seed: Callable[[str], None]
    exists: Callable[[str], bool]
    dead: KeySink


@dataclass
class Docs:
    sink: DocumentSink
    index: str
    get: Callable[[str], dict[str, Any] | None]
    dead: DocumentSink


STRICT = {"dynamic": "strict", "properties": {"name": {"type": "keyword"}}}


@pytest.fixture(params=["twin", "real"])
def keys(request: pytest.FixtureRequest) -> Iterator[Keys]:
    if request.param == "twin":
        twin, dead = MemoryKeySink(), MemoryKeySink()
        dead.down = True
        yield Keys(twin, lambda k: twin.set(k), lambda k: twin.get(k) is not None, dead)
        return
    client = redis_client(Settings(redis_url=request.getfixturevalue("redis_url")))
    nowhere = redis_client(
        Settings(
            redis_url="redis://127.0.0.1:9/0", redis_connect_timeout=0.2, redis_socket_timeout=0.2
        )
    )
    yield Keys(
        RedisSink(client),
        lambda k: bool(client.set(k, b"1")),
        lambda k: bool(client.exists(k)),
        RedisSink(nowhere),
    )


@pytest.fixture(params=["twin", "real"])
def docs(request: pytest.FixtureRequest) -> Iterator[Docs]:
    index = f"contract-{uuid.uuid4().hex[:10]}"
    if request.param == "twin":
        twin, dead = MemoryDocumentSink(), MemoryDocumentSink()
        dead.down = True
        twin.reject(
            lambda a: (
                None
                if set(a.document) <= {"name"}
                else "strict_dynamic_mapping_exception: mapping set to strict"
            )
        )
        yield Docs(twin, index, lambda i: twin.get(index, i), dead)
        return
    es: Elasticsearch = elasticsearch_client(Settings(es_url=request.getfixturevalue("es_url")))
    es.indices.create(index=index, mappings=STRICT)

    def get(doc_id: str) -> dict[str, Any] | None:
        found = es.options(ignore_status=404).get(index=index, id=doc_id)
        return dict(found["_source"]) if found.get("found") else None

    nowhere = elasticsearch_client(Settings(es_url="http://127.0.0.1:9", es_timeout=1))
    try:
        yield Docs(SearchSink(es), index, get, SearchSink(nowhere))
    finally:
        es.options(ignore_status=404).indices.delete(index=index)
        es.close()


# -- KeySink -------------------------------------------------------------------------------


def test_delete_removes_every_key_and_counts_those_that_existed(keys: Keys) -> None:
    run = uuid.uuid4().hex[:8]
    present = [f"c:{run}:{i}" for i in range(5)]
    for key in present:
        keys.seed(key)
    assert keys.sink.delete([*present, f"c:{run}:absent"]) == 5
    assert not any(keys.exists(k) for k in present)


def test_delete_is_idempotent_and_empty_is_free(keys: Keys) -> None:
    key = f"c:{uuid.uuid4().hex[:8]}"
    keys.seed(key)
    assert keys.sink.delete([key]) == 1
    assert keys.sink.delete([key]) == 0
    assert keys.sink.delete([]) == 0


def test_unreachable_key_sink_raises_transient_and_pings_false(keys: Keys) -> None:
    with pytest.raises(TransientError, match="UNLINK"):
        keys.dead.delete(["a", "b"])
    assert keys.dead.ping() is False
    assert keys.sink.ping() is True


def test_purge_deletes_every_match_and_nothing_else(keys: Keys) -> None:
    run = uuid.uuid4().hex[:8]
    matching = [f"p{run}:user:{i}" for i in range(2500)]  # several SCAN pages and UNLINKs
    others = [f"p{run}:order:1", f"q{run}:user:1", f"p{run}:user"]
    for key in [*matching, *others]:
        keys.seed(key)
    assert keys.sink.purge(f"p{run}:user:*") == len(matching)
    assert not any(keys.exists(k) for k in matching)
    assert all(keys.exists(k) for k in others)
    assert keys.sink.purge(f"p{run}:user:*") == 0  # idempotent


def test_purge_patterns_escape_glob_characters(keys: Keys) -> None:
    run = uuid.uuid4().hex[:8]
    keys.seed(f"{run}[a]*:1")
    keys.seed(f"{run}a*:1")
    keys.seed(f"{run}[a]x:1")
    assert keys.sink.purge(f"{run}\\[a\\]\\*:*") == 1
    assert not keys.exists(f"{run}[a]*:1")
    assert keys.exists(f"{run}a*:1") and keys.exists(f"{run}[a]x:1")


def test_unreachable_key_sink_purge_raises_transient(keys: Keys) -> None:
    with pytest.raises(TransientError, match="SCAN"):
        keys.dead.purge("x:*")


# -- DocumentSink --------------------------------------------------------------------------


def test_newer_versions_win_and_stale_writes_are_success(docs: Docs) -> None:
    assert docs.sink.apply([IndexDoc(docs.index, "1", {"name": "v5"}, pos(5))]) == []
    stale = [IndexDoc(docs.index, "1", {"name": "v3"}, pos(3))]
    same = [IndexDoc(docs.index, "1", {"name": "also v5"}, pos(5))]
    assert docs.sink.apply(stale) == [] and docs.sink.apply(same) == []
    assert docs.get("1") == {"name": "v5"}
    assert docs.sink.apply([IndexDoc(docs.index, "1", {"name": "v7"}, pos(7))]) == []
    assert docs.get("1") == {"name": "v7"}


def test_deletes_are_versioned_and_a_missing_document_is_fine(docs: Docs) -> None:
    docs.sink.apply([IndexDoc(docs.index, "1", {"name": "x"}, pos(5))])
    assert docs.sink.apply([DeleteDoc(docs.index, "1", pos(4))]) == []  # older: loses
    assert docs.get("1") == {"name": "x"}
    assert (
        docs.sink.apply([DeleteDoc(docs.index, "1", pos(6)), DeleteDoc(docs.index, "2", pos(6))])
        == []
    )
    assert docs.get("1") is None and docs.get("2") is None


def test_a_rejected_document_fails_alone_and_permanently(docs: Docs) -> None:
    failures = docs.sink.apply(
        [
            IndexDoc(docs.index, "ok", {"name": "fine"}, pos(1)),
            IndexDoc(docs.index, "bad", {"unknown_field": 1}, pos(1)),
        ]
    )
    assert [(f.action.doc_id, type(f.error)) for f in failures] == [("bad", PermanentError)]
    assert "400" in str(failures[0].error)
    assert docs.get("ok") == {"name": "fine"} and docs.get("bad") is None


def test_unreachable_document_sink_raises_transient(docs: Docs) -> None:
    with pytest.raises(TransientError, match="bulk"):
        docs.dead.apply([IndexDoc(docs.index, "1", {"name": "x"}, pos(1))])


def test_purge_deletes_older_documents_and_keeps_newer_ones(docs: Docs) -> None:
    older = [IndexDoc(docs.index, str(i), {"name": f"n{i}"}, pos(10 + i)) for i in range(1200)]
    newer = IndexDoc(docs.index, "new", {"name": "after the statement"}, pos(5000))
    assert docs.sink.apply([*older, newer]) == []
    assert docs.sink.purge(docs.index, pos(4000)) == len(older)
    assert all(docs.get(a.doc_id) is None for a in older[:: 97])
    assert docs.get("new") == {"name": "after the statement"}
    # A late write of a change from before the statement is refused (tombstone or absent: gone).
    docs.sink.apply([IndexDoc(docs.index, "1", {"name": "late"}, pos(11))])
    assert docs.sink.purge(docs.index, pos(4000)) in (0, 1)  # idempotent either way
    assert docs.get("1") is None
    assert docs.sink.purge(f"{docs.index}-missing", pos(4000)) == 0


def test_unreachable_document_sink_purge_raises_transient(docs: Docs) -> None:
    with pytest.raises(TransientError):
        docs.dead.purge(docs.index, pos(1))


# -- through the Applier: one action per document, keys then documents ---------------------


def test_the_applier_keeps_the_newest_write_per_document(keys: Keys, docs: Docs) -> None:
    key = f"c:{uuid.uuid4().hex[:8]}"
    keys.seed(key)
    report = Applier(keys.sink, docs.sink).apply(
        [
            DeleteKeys((key,), pos(1)),
            IndexDoc(docs.index, "1", {"name": "b"}, pos(2)),
            IndexDoc(docs.index, "1", {"name": "a"}, pos(1)),
        ]
    )
    assert report.failures == [] and report.documents == 1 and report.keys_deleted == 1
    assert docs.get("1") == {"name": "b"} and not keys.exists(key)
