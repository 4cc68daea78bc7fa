"""The retry scheduler on its own: no Kafka, no sinks, an injected clock."""

from __future__ import annotations

import datetime as dt
import random

from cachesync import BinlogPosition, DeleteKeys, IndexDoc, PermanentError, RetryPolicy
from cachesync.errors import TransientError
from cachesync.kafka.client import Record
from cachesync.kafka.codec import ErrorInfo, RetryMessage, encode_message
from cachesync.kafka.scheduler import (
    SINK_DATABASE,
    SINK_REDIS,
    SINK_SEARCH,
    Flow,
    Offsets,
    Outcome,
    Scheduler,
    newest,
    sink_of,
)

POLICY = RetryPolicy(attempts=3, min_backoff=10.0, max_backoff=40.0, jitter=0.0)
T0 = 1_800_000_000.0
P0 = ("retry", 0)
DOWN = TransientError("Redis UNLINK failed: connection refused")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def make(clock: Clock, **options: object) -> Scheduler:
    return Scheduler(POLICY, clock=clock, identity={"group": "g"}, **options)  # type: ignore[arg-type]


def record(
    offset: int,
    key: str,
    attempt: int = 1,
    failed_at: float = T0,
    partition: int = 0,
    version: int | None = None,
) -> Record:
    when = dt.datetime.fromtimestamp(failed_at, dt.UTC)
    position = BinlogPosition("mysql-bin.000001", version) if version is not None else None
    error = ErrorInfo("TransientError", "down", True)
    message = RetryMessage(
        DeleteKeys((key,), position), attempt, when, when, error, {"component": "test"}
    )
    return Record("retry", partition, offset, 0, key.encode(), encode_message(message))


def ok(*keys: str, sink: str = SINK_REDIS) -> list[Outcome]:
    return [Outcome(k, sink) for k in keys]


def test_a_record_is_due_backoff_after_its_last_failure_and_a_fresh_one_at_once() -> None:
    clock = Clock()
    s = make(clock)
    s.receive(record(0, "old"))
    s.receive(record(1, "fresh", attempt=0))
    assert [t.key for t in s.take_due()] == ["fresh"]
    assert s.next_due() == T0 + POLICY.backoff(1)
    clock.now += POLICY.backoff(1) - 0.001
    assert s.take_due() == []
    clock.now += 0.001
    assert [t.key for t in s.take_due()] == ["old"]


def test_the_watermark_holds_at_the_lowest_unfinished_offset() -> None:
    clock = Clock()
    s = make(clock)
    for offset, key in enumerate(["slow", "x", "y"]):
        s.receive(record(offset, key, attempt=2 if key == "slow" else 1))  # slow: backoff(2)
    clock.now += POLICY.backoff(1)
    assert s.complete(ok(*(t.key for t in s.take_due()))) == 2
    assert s.committable() == {P0: 0}
    clock.now = T0 + 100 + POLICY.backoff(1)
    s.complete(ok(*(t.key for t in s.take_due())))
    assert s.committable() == {P0: 3}
    s.committed({P0: 3})
    assert s.committable() == {}  # nothing moved since the last commit


def test_offsets_commit_past_the_highest_when_all_finished() -> None:
    offsets = Offsets()
    for o in (5, 6, 7):
        offsets.add(o)
    offsets.finish(6)
    assert offsets.committable() == 5
    offsets.finish(5)
    assert offsets.committable() == 7
    offsets.finish(7)
    assert offsets.committable() == 8


def test_same_key_records_queue_behind_the_head_and_coalesce_into_one_turn() -> None:
    clock = Clock()
    s = make(clock)
    s.receive(record(0, "k", attempt=2))  # waits backoff(2)
    s.receive(record(1, "k", attempt=0))  # due now, but behind the older one
    assert s.take_due() == []
    clock.now += POLICY.backoff(2)
    (turn,) = s.take_due()
    assert turn.key == "k" and turn.records == 2
    assert s.complete(ok("k")) == 2
    assert s.pending() == 0 and s.committable() == {P0: 2}


def test_coalescing_picks_the_newest_position_then_the_latest_record() -> None:
    def doc(version: int, name: str) -> IndexDoc:
        return IndexDoc("users", "1", {"name": name}, BinlogPosition("mysql-bin.000001", version))

    def keys(version: int | None, key: str) -> DeleteKeys:
        pos = BinlogPosition("mysql-bin.000001", version) if version is not None else None
        return DeleteKeys((key,), pos)

    assert newest([doc(5, "a"), doc(3, "b")]) == doc(5, "a")
    assert newest([doc(3, "a"), doc(3, "b")]).document == {"name": "b"}
    assert newest([keys(None, "a"), keys(1, "b")]) == keys(1, "b")
    assert newest([keys(1, "a"), keys(None, "b")]) == keys(1, "a")
    clock = Clock()
    s = make(clock)
    s.receive(record(0, "k", attempt=0, version=900))
    s.receive(record(1, "k", attempt=0, version=100))
    (turn,) = s.take_due()
    assert turn.action.position is not None and turn.action.position.pos == 900


def test_a_transient_failure_costs_every_queued_record_one_attempt_and_reschedules() -> None:
    clock = Clock()
    s = make(clock)
    s.receive(record(0, "k", attempt=1))
    s.receive(record(1, "k", attempt=0))
    clock.now += POLICY.backoff(1)
    s.take_due()
    s.complete([Outcome("k", SINK_REDIS, DOWN)])
    assert s.letters() == [] and s.pending() == 2
    assert s.next_due() == clock.now + POLICY.backoff(2)  # the head failed twice now
    assert s.take_due() == []


def test_exhausted_records_become_dead_letters_holding_their_offsets() -> None:
    clock = Clock()
    s = make(clock)
    s.receive(record(0, "k"))
    for _ in range(4):
        clock.now += POLICY.max_backoff
        s.complete([Outcome(t.key, SINK_REDIS, DOWN) for t in s.take_due()])
    (letter,) = s.letters()
    assert letter.reason == "exhausted" and letter.message is not None
    assert letter.message.attempt == POLICY.attempts
    assert letter.source.offset == 0 and letter.error.transient
    assert letter.consumer == {"group": "g"}
    assert s.pending() == 1 and s.committable() == {P0: 0}  # not until acknowledged
    assert s.letters_published(1) == [letter]
    assert s.pending() == 0 and s.committable() == {P0: 1}


def test_a_permanent_error_dead_letters_only_the_record_it_was_about() -> None:
    clock = Clock()
    s = make(clock)
    s.receive(record(0, "k", attempt=0))
    s.receive(record(1, "k", attempt=0))
    (turn,) = s.take_due()
    assert turn.records == 2
    s.complete([Outcome("k", SINK_SEARCH, PermanentError("mapping rejected"))])
    # the applied action was the later record's; the earlier one earned no verdict yet
    assert [(d.reason, d.source.offset) for d in s.letters()] == [("permanent", 1)]
    (again,) = s.take_due()  # at once, on its own
    assert again.key == "k" and again.records == 1
    s.complete([Outcome("k", SINK_SEARCH, PermanentError("mapping rejected"))])
    letters = s.letters()
    assert [(d.reason, d.source.offset) for d in letters] == [("permanent", 1), ("permanent", 0)]
    assert all(d.message is not None and d.message.attempt == 1 for d in letters)
    assert not letters[0].error.transient


def test_the_rest_of_a_key_survives_a_permanent_failure_of_its_newest_record() -> None:
    clock = Clock()
    s = make(clock)
    s.receive(record(0, "k", attempt=0, version=5))
    s.receive(record(1, "k", attempt=0, version=9))  # the poison-ish newest one
    s.take_due()
    s.complete([Outcome("k", SINK_REDIS, PermanentError("no model declares table 'x'"))])
    (turn,) = s.take_due()
    assert turn.action.position == BinlogPosition("mysql-bin.000001", 5)
    assert s.complete(ok("k")) == 1
    assert [d.source.offset for d in s.letters()] == [1]
    s.letters_published(1)
    assert s.committable() == {P0: 2}


def test_undecodable_record_is_a_dead_letter_and_the_partition_flows() -> None:
    clock = Clock()
    s = make(clock)
    letter = s.receive(Record("retry", 0, 0, 0, b"x", b"{oops"))
    s.receive(record(1, "a", attempt=0))
    assert letter is not None and letter.reason == "undecodable"
    assert letter.raw_value == b"{oops" and letter.raw_key == b"x"
    assert s.letters() == [letter]
    s.complete(ok(*(t.key for t in s.take_due())))
    s.letters_published(1)
    assert s.committable() == {P0: 2}


def test_a_sink_that_answers_again_wakes_every_key_waiting_on_it_but_no_other() -> None:
    clock = Clock()
    s = make(clock)
    s.receive(record(0, "a"))
    s.receive(record(1, "b"))
    s.receive(record(2, "doc"))
    clock.now += POLICY.backoff(1)
    s.take_due()
    s.complete(
        [
            Outcome("a", SINK_REDIS, DOWN),
            Outcome("b", SINK_REDIS, DOWN),
            Outcome("doc", SINK_DATABASE, DOWN),
        ]
    )  # next try in backoff(2) = 20 s
    s.receive(record(3, "c", attempt=0))
    (turn,) = s.take_due()
    s.complete(ok(turn.key))  # Redis answers again
    assert sorted(t.key for t in s.take_due()) == ["a", "b"]  # the database key still waits


def test_a_success_of_a_sink_that_was_not_failing_wakes_nothing() -> None:
    clock = Clock()
    s = make(clock)
    s.receive(record(0, "a"))
    clock.now += POLICY.backoff(1)
    s.take_due()
    s.complete([Outcome("a", SINK_SEARCH, DOWN)])
    s.receive(record(1, "c", attempt=0))
    s.complete(ok(*(t.key for t in s.take_due())))  # Redis never failed
    assert s.take_due() == []


def test_take_due_hands_out_at_most_max_batch_keys() -> None:
    clock = Clock()
    s = make(clock, max_batch=2)
    for i in range(5):
        s.receive(record(i, f"k{i}", attempt=0))
    assert len(s.take_due()) == 2 and len(s.take_due()) == 2 and len(s.take_due()) == 1


def test_flow_pauses_at_max_pending_and_resumes_below_half() -> None:
    clock = Clock()
    s = make(clock, max_pending=4)
    for i in range(4):
        s.receive(record(i, f"k{i}", attempt=2))
    assert s.flow(paused=False) is Flow.PAUSE
    assert s.flow(paused=True) is Flow.PAUSE  # again: a rebalance may add partitions
    clock.now = T0 + 100 + POLICY.backoff(1)
    turns = s.take_due()
    s.complete(ok(*(t.key for t in turns[:2])))
    assert s.flow(paused=True) is Flow.KEEP  # 2 of 4: not below half
    s.complete(ok(turns[2].key))
    assert s.flow(paused=True) is Flow.RESUME
    assert s.flow(paused=False) is Flow.KEEP


def test_revoked_partitions_forget_their_records_letters_and_offsets() -> None:
    clock = Clock()
    s = make(clock)
    s.receive(record(0, "a", attempt=2))
    s.receive(Record("retry", 0, 1, 0, None, b"junk"))
    s.receive(record(0, "b", attempt=2, partition=1))
    s.revoke([P0])
    assert s.pending() == 1 and s.letters() == []
    assert set(s.committable()) == {("retry", 1)}
    clock.now = T0 + 100 + POLICY.backoff(1)
    assert [t.key for t in s.take_due()] == ["b"]


def test_an_absurd_attempt_count_is_scheduled_not_raised() -> None:
    s = make(Clock(), rng=random.Random(1))
    s.receive(record(0, "k", attempt=5000))
    assert s.next_due() == T0 + POLICY.max_backoff


def test_sinks_of_actions() -> None:
    assert sink_of(DeleteKeys(("k",))) == SINK_REDIS
    assert sink_of(IndexDoc("users", "1", {}, BinlogPosition("f.000001", 4))) == SINK_SEARCH
