"""Fan-out jobs: progress is saved only past applied chunks, resumes, and yields to the stream.

The chunk reader is a stand-in for :class:`~cachesync.binlog.fanout.Fanout` over
a list of rows (the real one is exercised against MariaDB in
``tests/integration/binlog/test_fanout.py`` and the SIGKILL chaos test); the
lanes, sinks and checkpoint store are the real lanes over the in-memory twins.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from cachesync.actions import DeleteKeys, IndexDoc
from cachesync.binlog.checkpoint import ResumePoint
from cachesync.binlog.fanjobs import FanoutJob, FanoutJobs, job_prefix
from cachesync.binlog.fanout import FanoutChunk
from cachesync.binlog.lanes import Lanes
from cachesync.changes import BinlogPosition, GtidPosition, Position
from cachesync.deadletters import PoisonChange
from cachesync.policies import FanoutPolicy
from cachesync.testing import (
    MemoryCheckpointStore,
    MemoryDocumentSink,
    MemoryKeySink,
    RecordingFailureHandler,
)
from tests.unit.binlog.test_lanes import _lanes as _shared_lanes
from tests.unit.binlog.test_lanes import _wait, stop
from tests.unit.models import user_spec

__all__ = ["stop"]  # the fixture

SPEC = user_spec()


def _lanes(keys: MemoryKeySink, docs: MemoryDocumentSink, stop: threading.Event) -> Lanes:
    return _shared_lanes(keys, docs, RecordingFailureHandler(), stop)
PIPELINE = "p"


class Rows:
    """``read(job)`` over ids 1..n, in chunks of *chunk*: a key and a document per row."""

    def __init__(self, n: int, chunk: int) -> None:
        self.ids = list(range(1, n + 1))
        self.chunk = chunk
        self.reads: list[tuple[Any, ...] | None] = []
        self.gate = threading.Event()
        self.gate.set()

    def spec_of(self, model: str) -> Any:
        return SPEC if model == SPEC.model else None

    def read(self, job: FanoutJob, *, limit: int | None = None) -> FanoutChunk:
        self.gate.wait(10)
        self.reads.append(job.after)
        start = 0 if job.after is None else job.after[0]
        ids = [i for i in self.ids if i > start][: limit or self.chunk]
        chunk = FanoutChunk(
            rows=len(ids),
            final=len(ids) < (limit or self.chunk),
            last=(ids[-1],) if ids else job.after,
        )
        chunk.actions.append(DeleteKeys(tuple(f"card:{i}" for i in ids), job.position))
        chunk.actions += [IndexDoc("idx", str(i), {"v": job.value}, job.position) for i in ids]
        return chunk


def _jobs(
    rows: Rows,
    lanes: Lanes,
    store: MemoryCheckpointStore,
    stop: threading.Event,
    *,
    max_jobs: int = 10,
    buried: list[PoisonChange] | None = None,
) -> FanoutJobs:
    return FanoutJobs(
        rows,  # type: ignore[arg-type]
        lanes,
        store,
        PIPELINE,
        policy=FanoutPolicy(chunk=rows.chunk, max_jobs=max_jobs, stop_timeout=5),
        bury=(buried if buried is not None else []).extend,
        backoff=lambda _n: 0.01,
        stopped=stop,
        keepalive=lambda: None,
    )


def _job(value: int = 1, at: int = 50, after: tuple[Any, ...] | None = None) -> FanoutJob:
    return FanoutJob(SPEC, ("category",), (value,), BinlogPosition("bin.000001", at), after)


def _stored(store: MemoryCheckpointStore) -> dict[str, FanoutJob]:
    out = {}
    for name in store.names(job_prefix(PIPELINE)):
        stored = store.load(name)
        assert stored is not None
        out[name] = FanoutJob.decode(stored.position, lambda m: SPEC)
    return out


def test_progress_is_saved_only_past_applied_chunks(stop: threading.Event) -> None:
    keys, docs, store = MemoryKeySink(), MemoryDocumentSink(), MemoryCheckpointStore()
    lanes = _lanes(keys, docs, stop)
    rows = Rows(25, chunk=10)
    jobs = _jobs(rows, lanes, store, stop)
    try:
        docs.freeze()
        assert jobs.add([_job(after=(10,))])  # the reader planned rows 1..10 itself
        jobs.persist()  # as the sidecar does before saving the checkpoint past the change
        (saved,) = _stored(store).values()
        assert saved.after == (10,)
        jobs.start()
        _wait(lambda: len(rows.reads) >= 2)  # read ahead: chunk 11..20 in the lanes, 21..25 read
        time.sleep(0.1)
        jobs.persist()
        (saved,) = _stored(store).values()
        assert saved.after == (10,), "progress passed a chunk the frozen sink has not applied"
        docs.thaw()
        _wait(lambda: jobs.pending == 0)
        jobs.persist()
        assert _stored(store) == {}, "a finished job is deleted"
        assert sorted(docs.indexes["idx"], key=int) == [str(i) for i in range(11, 26)]
        assert set(keys.deleted) == {f"card:{i}" for i in range(11, 26)}
        assert rows.reads == [(10,), (20,)]
    finally:
        jobs.close()
        lanes.close(drain=False)


def test_a_stored_job_resumes_from_its_saved_chunk(stop: threading.Event) -> None:
    keys, docs, store = MemoryKeySink(), MemoryDocumentSink(), MemoryCheckpointStore()
    job = _job(after=(20,))
    store.save(job_prefix(PIPELINE) + job.id, job.encode())
    store.save(job_prefix(PIPELINE) + "junk", "{not json")
    lanes = _lanes(keys, docs, stop)
    rows = Rows(35, chunk=10)
    jobs = _jobs(rows, lanes, store, stop)
    try:
        assert jobs.load() == 1  # the malformed entry is dropped, loudly
        jobs.start()
        _wait(lambda: jobs.pending == 0)
        jobs.persist()
        assert store.names(job_prefix(PIPELINE)) == []
        assert rows.reads == [(20,), (30,)]
        assert sorted(docs.indexes["idx"], key=int) == [str(i) for i in range(21, 36)]
    finally:
        jobs.close()
        lanes.close(drain=False)


def test_a_newer_change_of_the_same_row_restarts_the_job(stop: threading.Event) -> None:
    keys, docs, store = MemoryKeySink(), MemoryDocumentSink(), MemoryCheckpointStore()
    lanes = _lanes(keys, docs, stop)
    rows = Rows(40, chunk=10)
    jobs = _jobs(rows, lanes, store, stop)
    try:
        rows.gate.clear()
        jobs.start()
        assert jobs.add([_job(at=50, after=(10,))])
        _wait(lambda: jobs.pending == 1)
        assert jobs.add([_job(at=90, after=(10,))])  # renamed again: its own first chunk done
        assert jobs.pending == 1
        rows.gate.set()
        _wait(lambda: jobs.pending == 0)
        # Every row after the second change's first chunk carries the second version.
        versions = {d: stored.version for d, stored in docs.indexes["idx"].items()}
        assert set(versions) == {str(i) for i in range(11, 41)}
        assert set(versions.values()) == {BinlogPosition("bin.000001", 90).version}
    finally:
        jobs.close()
        lanes.close(drain=False)


def test_the_reader_waits_for_room_and_gives_up_when_stopped(stop: threading.Event) -> None:
    keys, docs, store = MemoryKeySink(), MemoryDocumentSink(), MemoryCheckpointStore()
    lanes = _lanes(keys, docs, stop)
    jobs = _jobs(Rows(5, chunk=10), lanes, store, stop, max_jobs=2)
    try:  # the worker is not started: nothing makes room
        assert jobs.add([_job(1), _job(2)])
        assert jobs.add([_job(2, at=60)])  # a replacement needs no room
        result: list[bool] = []
        waiter = threading.Thread(target=lambda: result.append(jobs.add([_job(3)])))
        waiter.start()
        time.sleep(0.2)
        assert not result, "a third job was queued beyond max_jobs"
        stop.set()
        waiter.join(5)
        assert result == [False]
    finally:
        jobs.close()
        lanes.close(drain=False)


def test_stream_work_goes_before_background_chunks(stop: threading.Event) -> None:
    keys, docs = MemoryKeySink(), MemoryDocumentSink()
    lanes = _lanes(keys, docs, stop)
    try:
        docs.freeze()  # the lane is busy with something: both kinds of work queue up
        lanes.submit([IndexDoc("idx", "first", {}, BinlogPosition("b", 1))], _point(1), 1)
        time.sleep(0.05)
        done = threading.Event()
        lanes.submit_background(
            [IndexDoc("idx", f"bg{i}", {}, BinlogPosition("b", 2)) for i in range(3)], done.set
        )
        lanes.submit([IndexDoc("idx", "stream", {}, BinlogPosition("b", 3))], _point(3), 1)
        docs.thaw()
        _wait(done.is_set)
        order = [a.doc_id for call in docs.calls for a in call]
        assert order.index("stream") < order.index("bg0"), order
        _wait(lambda: lanes.ledger.settled()[0] == _point(3))
    finally:
        lanes.close(drain=False)


def _point(n: int) -> ResumePoint:
    return ResumePoint("bin.000001", 1000 + n)


values = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.text(),
    st.binary(max_size=40),
    st.decimals(allow_nan=False, allow_infinity=False, places=4),
    st.datetimes(min_value=dt.datetime(1000, 1, 1)),
    st.dates(),
)
positions: st.SearchStrategy[Position] = st.one_of(
    st.builds(
        BinlogPosition,
        st.just("mysql-bin.000042"),
        st.integers(4, 2**32 - 1),
        st.integers(0, 4000),
    ),
    st.builds(
        GtidPosition,
        st.just("0-1-100"),
        st.integers(0, 2**30),
        st.integers(0, 4000),
        st.integers(0, 4000),
    ),
)


@given(
    value=st.tuples(values) | st.tuples(values, values),
    after=st.none() | st.tuples(values),
    position=positions,
)
def test_a_job_round_trips_through_the_store(
    value: tuple[Any, ...], after: tuple[Any, ...] | None, position: Position
) -> None:
    job = FanoutJob(SPEC, ("category", "department"), value, position, after)
    back = FanoutJob.decode(job.encode(), lambda m: SPEC if m == SPEC.model else None)
    assert (back.prefix, back.value, back.after, back.position) == (
        job.prefix,
        job.value,
        job.after,
        job.position,
    )
    assert back.id == job.id
    summary = FanoutJob.summary(job.encode())  # what `cachesync status` lists
    assert summary.startswith(f"{SPEC.model} via category.department = ")
    assert ("from its start" in summary) is (after is None)
