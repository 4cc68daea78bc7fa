"""Per-sink lanes: one sink frozen never holds the other, and the checkpoint waits for both."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from cachesync import metrics
from cachesync.actions import Action, DeleteKeys, IndexDoc
from cachesync.apply import Applier
from cachesync.binlog.checkpoint import ResumePoint
from cachesync.binlog.lanes import Lanes, Ledger
from cachesync.binlog.sidecar import Sidecar
from cachesync.changes import BinlogPosition, Op, RowChange
from cachesync.errors import ConfigurationError
from cachesync.policies import BatchPolicy, ImmediateRetryPolicy, LanePolicy, SidecarPolicy
from cachesync.registry import Registry
from cachesync.testing import (
    MemoryCheckpointStore,
    MemoryDocumentSink,
    MemoryKeySink,
    RecordingFailureHandler,
)
from tests.unit.models import user_spec


def _point(n: int) -> ResumePoint:
    return ResumePoint("bin.000001", 1000 + n)


def _key(n: int) -> DeleteKeys:
    return DeleteKeys((f"k:{n}",), BinlogPosition("bin.000001", 1000 + n))


def _doc(n: int) -> IndexDoc:
    return IndexDoc("idx", str(n), {"n": n}, BinlogPosition("bin.000001", 1000 + n))


def _wait(what: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


@pytest.fixture
def stop() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


def _lanes(
    keys: MemoryKeySink,
    docs: MemoryDocumentSink,
    handler: RecordingFailureHandler,
    stop: threading.Event,
    policy: LanePolicy | None = None,
) -> Lanes:
    applier = Applier(keys, docs, policy=ImmediateRetryPolicy.NONE, sleep=lambda _s: None)
    return Lanes(
        applier,
        handler,
        policy=policy or LanePolicy(),
        merge_rows=1000,
        stopped=stop,
        sleep=lambda _s: None,
        backoff=lambda _n: 0.01,
        keepalive=lambda: None,
    )


def test_ledger_settles_only_what_every_lane_finished() -> None:
    ledger = Ledger(["keys", "documents"])
    one = ledger.open(_point(1), 1, ["keys", "documents"])
    two = ledger.open(_point(2), 1, ["keys"])
    assert ledger.settled() == (None, 0)
    ledger.finish("keys", [one, two])
    assert ledger.settled() == (None, 0), "documents still owes batch one"
    ledger.finish("documents", [one])
    assert ledger.settled() == (_point(2), 2)
    ledger.open(_point(3), 0, [])  # no work for any lane: settled at once
    assert ledger.settled() == (_point(3), 2)
    assert not ledger.owing()


def test_a_frozen_document_sink_never_holds_key_deletes(stop: threading.Event) -> None:
    keys, docs, handler = MemoryKeySink(), MemoryDocumentSink(), RecordingFailureHandler()
    for n in range(100):
        keys.set(f"k:{n}")
    lanes = _lanes(keys, docs, handler, stop)
    docs.freeze()
    try:
        for n in range(100):
            actions: list[Action] = [_key(n), _doc(n)]
            assert lanes.submit(actions, _point(n), 1)
        _wait(lambda: not keys.values)
        assert lanes.ledger.settled() == (None, 0), "the checkpoint passed an unapplied document"
    finally:
        docs.thaw()
    _wait(lambda: lanes.ledger.settled()[0] == _point(99))
    assert len(docs.documents("idx")) == 100
    lanes.close(drain=True)


def test_a_frozen_key_sink_never_holds_documents(stop: threading.Event) -> None:
    keys, docs, handler = MemoryKeySink(), MemoryDocumentSink(), RecordingFailureHandler()
    lanes = _lanes(keys, docs, handler, stop)
    keys.freeze()
    try:
        for n in range(50):
            assert lanes.submit([_key(n), _doc(n)], _point(n), 1)
        _wait(lambda: len(docs.documents("idx")) == 50)
        assert lanes.ledger.settled()[0] is None
    finally:
        keys.thaw()
    _wait(lambda: lanes.ledger.settled()[0] == _point(49))
    lanes.close(drain=True)


def test_a_stuck_lane_with_a_full_queue_hands_its_queue_to_the_retry_path(
    stop: threading.Event,
) -> None:
    keys, docs, handler = MemoryKeySink(), MemoryDocumentSink(), RecordingFailureHandler()
    policy = LanePolicy(queue_actions=10, stuck_after=0.05, stuck_factor=1.0)
    lanes = _lanes(keys, docs, handler, stop, policy)
    before = metrics.snapshot()["lane_handoffs_total"]
    docs.freeze()
    try:
        for n in range(40):  # far more than the queue holds: the reader must not block
            assert lanes.submit([_key(n), _doc(n)], _point(n), 1)
        handed = {a.doc_id for a in handler.actions if isinstance(a, IndexDoc)}
        assert handed, "nothing was handed off"
        assert metrics.snapshot()["lane_handoffs_total"] - before == len(handler.actions)
        assert all("has not answered" in str(f.error) for f in handler.failures)
    finally:
        docs.thaw()
    _wait(lambda: lanes.ledger.settled()[0] == _point(39))
    applied = set(docs.documents("idx"))
    # every document was either applied by its lane or handed off: none lost
    assert applied | handed == {str(n) for n in range(40)}
    lanes.close(drain=True)


def test_a_stuck_lane_is_not_bypassed_when_the_retry_path_refuses(stop: threading.Event) -> None:
    keys, docs = MemoryKeySink(), MemoryDocumentSink()
    handler = RecordingFailureHandler(refuse=True)
    policy = LanePolicy(queue_actions=4, stuck_after=0.05, stuck_factor=1.0)
    lanes = _lanes(keys, docs, handler, stop, policy)
    docs.freeze()
    done = threading.Event()

    def write() -> None:
        for n in range(20):
            lanes.submit([_doc(n)], _point(n), 1)
        done.set()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    _wait(lambda: handler.calls >= 1)
    assert not done.is_set(), "the reader went on although the queue was full and refused"
    docs.thaw()
    writer.join(10)
    _wait(lambda: lanes.ledger.settled()[0] == _point(19))
    assert len(docs.documents("idx")) == 20, "refused work must be applied by its lane"
    lanes.close(drain=True)


def test_batches_merge_what_was_queued_while_the_sink_was_busy(stop: threading.Event) -> None:
    keys, docs, handler = MemoryKeySink(), MemoryDocumentSink(), RecordingFailureHandler()
    lanes = _lanes(keys, docs, handler, stop)
    keys.freeze()
    lanes.submit([_key(0)], _point(0), 1)
    _wait(lambda: len(keys.calls) == 0 and lanes.ledger.owing())
    for n in range(1, 30):
        lanes.submit([_key(n)], _point(n), 1)
    keys.thaw()
    _wait(lambda: lanes.ledger.settled()[0] == _point(29))
    # the first round trip carried the isolated change at once; the backlog travelled together
    assert [len(c) for c in keys.calls][:2] in ([1, 29], [30])
    lanes.close(drain=True)


def test_an_action_for_a_missing_sink_is_a_configuration_error(stop: threading.Event) -> None:
    applier = Applier(MemoryKeySink(), None)
    lanes = Lanes(
        applier,
        RecordingFailureHandler(),
        policy=LanePolicy(),
        merge_rows=10,
        stopped=stop,
        sleep=lambda _s: None,
        backoff=lambda _n: 0.01,
        keepalive=lambda: None,
    )
    with pytest.raises(ConfigurationError, match="es_url"):
        lanes.submit([_doc(1)], _point(1), 1)
    lanes.close(drain=True)


class _OnePollSource:
    """A binlog source that has one change, then notes what the reader had done with it
    by the time it polls again (and stops the sidecar)."""

    def __init__(self, sidecar: Sidecar, change: RowChange) -> None:
        self.sidecar = sidecar
        self.change = change
        self.polls = 0
        self.submitted_before_second_poll: bool | None = None
        self.resume_point = _point(0)
        self.table_statement = None  # no TRUNCATE/DROP/RENAME held

    def poll(self, max_rows: int, max_wait: float) -> list[RowChange]:
        self.polls += 1
        if self.polls == 1:
            self.resume_point = _point(1)
            return [self.change]
        lanes = self.sidecar._lanes
        assert lanes is not None
        if self.submitted_before_second_poll is None:
            self.submitted_before_second_poll = bool(
                lanes.ledger.owing() or lanes.ledger.settled()[0]
            )
        self.sidecar.stop()
        return []


@pytest.mark.parametrize(
    ("batch", "adaptive"), [(BatchPolicy(), True), (BatchPolicy.THROUGHPUT, False)]
)
def test_the_adaptive_default_submits_an_isolated_change_without_waiting_for_a_window(
    batch: BatchPolicy, adaptive: bool
) -> None:
    """Timing-free: with the default an isolated change reaches the lanes before the reader
    polls again; with a window preset the reader first polls for more."""
    registry = Registry()
    registry.add(user_spec())
    keys = MemoryKeySink()
    keys.set("user:7")
    sidecar = Sidecar(
        mysql={"host": "127.0.0.1", "port": 1, "user": "u", "database": "db"},
        registry=registry,
        applier=Applier(keys, MemoryDocumentSink()),
        store=MemoryCheckpointStore(),
        policy=SidecarPolicy(batch=batch),
    )
    sidecar.lock.check = lambda: None  # type: ignore[method-assign]
    row = {"id": 7, "user_name": "u7", "nickname": "n", "email": None, "state": 0, "is_active": 1}
    change = RowChange(Op.UPDATE, "db", "users", row, row, BinlogPosition("bin.000001", 1001))
    source = _OnePollSource(sidecar, change)
    sidecar._stream(source)  # type: ignore[arg-type]
    assert source.submitted_before_second_poll is adaptive
    assert "user:7" not in keys.values
    assert sidecar.saved == _point(1)
