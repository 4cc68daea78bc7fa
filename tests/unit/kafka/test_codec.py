"""The retry and dead-letter message formats: round trips, and what a decoder refuses."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from cachesync import BinlogPosition, DecodeError, DeleteDoc, DeleteKeys, IndexDoc, RowRef
from cachesync.errors import TransientError
from cachesync.kafka.codec import (
    DeadLetter,
    ErrorInfo,
    RecordRef,
    RetryMessage,
    decode_dead_letter,
    decode_message,
    encode_dead_letter,
    encode_message,
    format_time,
    message_key,
    parse_time,
)

T0 = dt.datetime(2026, 11, 1, 10, 0, 0, 123000, tzinfo=dt.UTC)
POS = BinlogPosition("mysql-bin.000003", 1234, 2)
REF = RowRef("app", "users", {"id": 42})


def message(action: object, attempt: int = 1) -> RetryMessage:
    return RetryMessage(
        action,  # type: ignore[arg-type]
        attempt,
        T0,
        T0 + dt.timedelta(seconds=3),
        ErrorInfo.of(TransientError("Redis UNLINK failed: connection refused")),
        {"component": "sidecar", "pipeline": "default"},
    )


@pytest.mark.parametrize(
    "action",
    [
        DeleteKeys(("user:42",), POS),
        DeleteKeys(("user:42",), None),
        IndexDoc("users", "42", {"name": "ann", "n": 1.5}, POS, REF),
        DeleteDoc("users", "42", POS, REF),
        IndexDoc("users", "42", {"name": "ann"}, POS, None),
    ],
)
def test_retry_message_round_trip(action: object) -> None:
    original = message(action)
    decoded = decode_message(encode_message(original))
    assert decoded == original
    assert decoded.key == message_key(decoded.action)


def test_envelope_fields_are_documented_names() -> None:
    obj = json.loads(encode_message(message(DeleteKeys(("user:42",), POS), attempt=3)))
    assert obj["format"] == "cachesync.retry" and obj["v"] == 1
    assert obj["key"] == "user:42"
    assert obj["attempt"] == 3
    assert obj["first_failed_at"] == "2026-11-01T10:00:00.123Z"
    assert obj["last_error"] == {
        "type": "TransientError",
        "message": "Redis UNLINK failed: connection refused",
        "transient": True,
    }
    assert obj["action"]["type"] == "delete_keys"
    assert obj["origin"]["component"] == "sidecar"


def test_document_messages_are_keyed_by_index_and_id() -> None:
    assert message_key(IndexDoc("users", "42", {}, POS, REF)) == "users/42"
    assert message_key(DeleteDoc("users", "7", POS)) == "users/7"
    with pytest.raises(ValueError):
        message_key(DeleteKeys(("a", "b")))


@pytest.mark.parametrize(
    "value",
    [
        b"\xff\xfe not json",
        b"[1, 2]",
        b'{"format": "cachesync.retry", "v": 2}',
        b'{"format": "something-else", "v": 1}',
        json.dumps(
            {
                "format": "cachesync.retry",
                "v": 1,
                "action": {"v": 1, "type": "delete_keys", "keys": ["a", "b"], "position": None},
                "attempt": 1,
                "first_failed_at": "2026-11-01T10:00:00Z",
            }
        ).encode(),
        json.dumps(
            {
                "format": "cachesync.retry",
                "v": 1,
                "action": {"v": 1, "type": "delete_keys", "keys": ["a"], "position": None},
                "attempt": -1,
                "first_failed_at": "2026-11-01T10:00:00Z",
            }
        ).encode(),
        None,
    ],
)
def test_undecodable_messages_raise_decode_error(value: bytes | None) -> None:
    with pytest.raises(DecodeError):
        decode_message(value)


def test_newer_version_says_to_upgrade() -> None:
    with pytest.raises(DecodeError, match="upgrade the consumer"):
        decode_message(b'{"format": "cachesync.retry", "v": 2}')


def test_dead_letter_round_trip_keeps_the_whole_message() -> None:
    letter = DeadLetter(
        "exhausted",
        ErrorInfo("TransientError", "still down", True),
        T0,
        RecordRef("cachesync.retry", 3, 1187, 1793000000000),
        message(IndexDoc("users", "42", {"name": "ann"}, POS, REF), attempt=8),
        consumer={"group": "g", "host": "h", "pid": 1},
    )
    decoded = decode_dead_letter(encode_dead_letter(letter))
    assert decoded == letter
    assert decoded.key == "users/42"


def test_undecodable_dead_letter_keeps_raw_bytes() -> None:
    letter = DeadLetter(
        "undecodable",
        ErrorInfo("DecodeError", "not JSON", False),
        T0,
        RecordRef("cachesync.retry", 0, 5, None),
        None,
        b"k\x00",
        b"\xff garbage",
    )
    decoded = decode_dead_letter(encode_dead_letter(letter))
    assert decoded.raw_key == b"k\x00" and decoded.raw_value == b"\xff garbage"
    assert decoded.message is None


def test_times_are_rfc3339_utc() -> None:
    assert format_time(T0) == "2026-11-01T10:00:00.123Z"
    assert parse_time("2026-11-01T10:00:00.123Z") == T0
    assert parse_time("2026-11-01T10:00:00") == T0.replace(microsecond=0)
