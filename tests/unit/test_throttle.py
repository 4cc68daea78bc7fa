"""The rate limiter of hand-off warnings, and the warning itself."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest

from cachesync.actions import DeleteKeys, IndexDoc
from cachesync.apply import Failure, FailureHandler, ReportingFailureHandler
from cachesync.changes import BinlogPosition
from cachesync.errors import HandOffError, PermanentError, TransientError
from cachesync.throttle import Throttle


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_pass_per_interval_counting_what_was_held_back() -> None:
    clock = Clock()
    throttle = Throttle(30, clock=clock)
    assert throttle.passes(2) == 2
    assert throttle.passes(3) is None
    clock.now += 29.9
    assert throttle.passes() is None
    clock.now += 0.2
    assert throttle.passes(1) == 5  # 3 + 1 held back, 1 now


class Accepting(FailureHandler):
    def __init__(self) -> None:
        self.seen: list[Failure] = []

    def handle(self, failures: Sequence[Failure]) -> None:
        self.seen += failures


class Refusing(FailureHandler):
    def handle(self, failures: Sequence[Failure]) -> None:
        raise HandOffError("nobody")


def _failures() -> list[Failure]:
    position = BinlogPosition("mysql-bin.000001", 4, 0)
    return [
        Failure(DeleteKeys(("user:1",), position), TransientError("Redis: connection refused")),
        Failure(
            IndexDoc("users", "1", {"secret": "do-not-log"}, position),
            PermanentError("mapper_parsing_exception"),
        ),
    ]


def test_hand_offs_are_announced_at_warning_rate_limited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    inner = Accepting()
    handler = ReportingFailureHandler(
        inner,
        component="sidecar",
        target="the retry path (Kafka topic cachesync.x.retry)",
        throttle=Throttle(30, clock=clock),
    )
    with caplog.at_level(logging.WARNING, logger="cachesync.apply"):
        handler.handle(_failures())
        handler.handle(_failures())
        clock.now += 31
        handler.handle(_failures()[:1])
    assert len(inner.seen) == 5
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 2, lines
    assert "handed 2 action(s) to the retry path (Kafka topic cachesync.x.retry)" in lines[0]
    assert "1 of this batch refused for good" in lines[0]
    assert "key user:1: Redis: connection refused" in lines[0]
    assert "handed 3 action(s)" in lines[1]  # the 2 held back and this one
    assert all("do-not-log" not in line for line in lines)


def test_a_refused_hand_off_is_not_announced(caplog: pytest.LogCaptureFixture) -> None:
    handler = ReportingFailureHandler(Refusing(), component="sidecar", target="x")
    with caplog.at_level(logging.WARNING), pytest.raises(HandOffError):
        handler.handle(_failures())
    assert not [r for r in caplog.records if "handed" in r.getMessage()]
