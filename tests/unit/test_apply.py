"""Applier retry and reporting rules on the in-memory twins, with time injected (no real sleeps)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from cachesync import (
    Applier,
    BinlogPosition,
    ConfigurationError,
    DeleteDoc,
    DeleteKeys,
    HandOffError,
    ImmediateRetryPolicy,
    IndexDoc,
    PermanentError,
)
from cachesync.actions import DocumentAction
from cachesync.apply import hand_off
from cachesync.sinks import DocumentFailure
from cachesync.testing import MemoryDocumentSink, MemoryKeySink, RecordingFailureHandler

POS = BinlogPosition("mysql-bin.000001", 100)


def test_transient_redis_errors_are_retried_with_injected_backoff() -> None:
    sleeps: list[float] = []
    redis = MemoryKeySink()
    redis.fail_next(2)
    applier = Applier(
        redis,
        None,
        sleep=sleeps.append,
        policy=ImmediateRetryPolicy(attempts=3, min_wait=0.1, max_wait=1),
    )
    report = applier.apply([DeleteKeys(("a", "b")), DeleteKeys(("b", "c"))])
    assert report.keys_deleted == 3 and not report.failures
    assert redis.calls == [["a", "b", "c"]] * 3  # one multi-key delete per attempt
    assert len(sleeps) == 2 and all(0 < s <= 1 for s in sleeps)


def test_exhausted_retries_report_one_failure_per_key() -> None:
    redis = MemoryKeySink()
    redis.down = True
    applier = Applier(
        redis,
        None,
        sleep=lambda s: None,
        policy=ImmediateRetryPolicy(attempts=2, min_wait=0, max_wait=0.01),
    )
    later = BinlogPosition("mysql-bin.000001", 200)
    report = applier.apply([DeleteKeys(("a", "b"), POS), DeleteKeys(("b", "c"), later)])
    assert [f.action for f in report.failures] == [
        DeleteKeys(("a",), POS),
        DeleteKeys(("b",), later),  # a key keeps the position of its latest change
        DeleteKeys(("c",), later),
    ]
    assert len(redis.calls) == 2


def test_only_transient_document_failures_are_retried() -> None:
    search = MemoryDocumentSink()
    search.reject(lambda a: "mapping" if a.doc_id == "bad" else None)
    search.throttle(lambda a: a.doc_id == "slow", times=1)
    applier = Applier(None, search, sleep=lambda s: None)
    docs = [IndexDoc("i", name, {}, POS) for name in ("ok", "slow", "bad")]
    report = applier.apply(docs)
    assert [[a.doc_id for a in call] for call in search.calls] == [["ok", "slow", "bad"], ["slow"]]
    assert [(f.action, type(f.error)) for f in report.failures] == [(docs[2], PermanentError)]
    assert report.documents == 2
    assert search.get("i", "slow") == {} and search.get("i", "bad") is None


def test_one_action_per_document_reaches_the_sink_the_latest() -> None:
    search = MemoryDocumentSink()
    newer = BinlogPosition("mysql-bin.000001", 300)
    Applier(None, search).apply(
        [
            IndexDoc("i", "1", {"v": "new"}, newer),
            DeleteDoc("i", "1", POS),
            IndexDoc("i", "1", {"v": "old"}, POS),
        ]
    )
    assert [[(a.doc_id, a.version) for a in call] for call in search.calls] == [
        [("1", newer.version)]
    ]
    assert search.get("i", "1") == {"v": "new"}


def test_an_action_for_a_missing_sink_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="redis_url"):
        Applier(None, MemoryDocumentSink()).apply([DeleteKeys(("a",))])
    with pytest.raises(ConfigurationError, match="es_url"):
        Applier(MemoryKeySink(), None).apply([IndexDoc("i", "1", {}, POS)])


def test_hand_off_passes_failures_on_and_a_refusal_reaches_the_caller() -> None:
    redis = MemoryKeySink()
    redis.down = True
    report = Applier(redis, None, policy=ImmediateRetryPolicy.NONE).apply([DeleteKeys(("a", "b"))])
    handler = RecordingFailureHandler()
    assert hand_off(report, handler) == 2
    assert [a.keys for a in handler.actions] == [("a",), ("b",)]
    with pytest.raises(HandOffError):
        hand_off(report, RecordingFailureHandler(refuse=True))
    assert (
        hand_off(Applier(MemoryKeySink(), None).apply([]), RecordingFailureHandler(refuse=True))
        == 0
    )


class ChokingKeys(MemoryKeySink):
    """A sink with a bug on one key: it raises something that is not its contract's error."""

    def delete(self, keys: Sequence[str]) -> int:
        if "bad" in keys:
            raise UnicodeEncodeError("utf-8", "bad", 0, 1, "surrogates not allowed")
        return super().delete(keys)


class ChokingDocuments(MemoryDocumentSink):
    def apply(self, actions: Sequence[DocumentAction]) -> list[DocumentFailure]:
        if any(a.doc_id == "bad" for a in actions):
            raise ValueError("the sink choked on 'bad'")
        return super().apply(actions)


def test_a_sink_that_breaks_its_contract_fails_only_the_action_it_choked_on() -> None:
    keys, docs = ChokingKeys(), ChokingDocuments()
    report = Applier(keys, docs, sleep=lambda s: None).apply(
        [
            DeleteKeys(("a", "bad", "b"), POS),
            IndexDoc("i", "ok", {}, POS),
            IndexDoc("i", "bad", {}, POS),
        ]
    )
    assert sorted(keys.deleted) == ["a", "b"] and docs.get("i", "ok") == {}
    assert [
        (type(f.error), getattr(f.action, "keys", None) or f.action.doc_id) for f in report.failures
    ] == [  # type: ignore[union-attr]
        (PermanentError, ("bad",)),
        (PermanentError, "bad"),
    ]
    assert report.keys_deleted == 2 and report.documents == 1
