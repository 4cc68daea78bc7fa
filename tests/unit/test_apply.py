"""Applier retry and hand-off rules, with time injected (no real sleeps)."""

from __future__ import annotations

from collections.abc import Sequence

from cachesync import (
    Applier,
    BinlogPosition,
    DeleteKeys,
    ImmediateRetryPolicy,
    IndexDoc,
    PermanentError,
    TransientError,
)
from cachesync.sinks.elasticsearch import DocumentFailure

POS = BinlogPosition("mysql-bin.000001", 100)


class FlakyRedis:
    """Fails the first *failures* deletes, then succeeds."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[list[str]] = []

    def delete(self, keys: Sequence[str]) -> int:
        self.calls.append(list(keys))
        if len(self.calls) <= self.failures:
            raise TransientError("connection refused")
        return len(keys)


class FlakySearch:
    """Fails document 'slow' transiently once and document 'bad' permanently."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def apply(self, actions: Sequence[IndexDoc]) -> list[DocumentFailure]:
        self.calls.append([a.doc_id for a in actions])
        out = []
        for a in actions:
            if a.doc_id == "bad":
                out.append(DocumentFailure(a, PermanentError("mapping")))
            elif a.doc_id == "slow" and len(self.calls) == 1:
                out.append(DocumentFailure(a, TransientError("429")))
        return out


def test_transient_redis_errors_are_retried_with_injected_backoff() -> None:
    sleeps: list[float] = []
    redis = FlakyRedis(failures=2)
    applier = Applier(
        redis,
        None,
        sleep=sleeps.append,  # type: ignore[arg-type]
        policy=ImmediateRetryPolicy(attempts=3, min_wait=0.1, max_wait=1),
    )
    report = applier.apply([DeleteKeys(("a", "b")), DeleteKeys(("b", "c"))])
    assert report.keys_deleted == 3 and not report.failures
    assert redis.calls == [["a", "b", "c"]] * 3  # one multi-key delete per attempt
    assert len(sleeps) == 2 and all(0 < s <= 1 for s in sleeps)


def test_exhausted_retries_hand_off_one_failure_per_key() -> None:
    applier = Applier(
        FlakyRedis(failures=99),
        None,
        sleep=lambda s: None,  # type: ignore[arg-type]
        policy=ImmediateRetryPolicy(attempts=2, min_wait=0, max_wait=0.01),
    )
    report = applier.apply([DeleteKeys(("a", "b"), POS)])
    assert [f.action for f in report.failures] == [
        DeleteKeys(("a",), POS),
        DeleteKeys(("b",), POS),
    ]


def test_only_transient_document_failures_are_retried() -> None:
    search = FlakySearch()
    applier = Applier(None, search, sleep=lambda s: None)  # type: ignore[arg-type]
    docs = [IndexDoc("i", name, {}, POS) for name in ("ok", "slow", "bad")]
    report = applier.apply(docs)
    assert search.calls == [["ok", "slow", "bad"], ["slow"]]
    assert [(f.action.doc_id, type(f.error)) for f in report.failures] == [
        ("bad", PermanentError)
    ]  # type: ignore[union-attr]
    assert report.documents == 2
