"""The Kafka message formats: retry messages and dead letters, versioned JSON.

Both are UTF-8 JSON objects built on :func:`cachesync.codec.encode_action`.
Times are RFC 3339 UTC strings with milliseconds. Unknown fields are ignored on
decode (a newer minor writer may add some); a different ``format`` or a ``v``
this code does not know raises :class:`~cachesync.errors.DecodeError`.

Retry message (topic ``retry_topic``), record key = :func:`message_key`::

    {
      "format": "cachesync.retry", "v": 1,
      "key": "user:42",                        # same as the record key
      "action": {"v": 1, "type": "delete_keys", "keys": ["user:42"], "position": "binlog:..."},
      "attempt": 1,                            # failed attempts so far; 0 = not tried yet (redrive)
      "first_failed_at": "2026-11-01T10:00:00.000Z",
      "last_failed_at": "2026-11-01T10:00:00.000Z",
      "last_error": {"type": "TransientError", "message": "Redis UNLINK ...", "transient": true},
      "origin": {"component": "sidecar", "pipeline": "default", "host": "app-1", "pid": 4242}
    }

``origin.component`` is who handed the action off first: ``sidecar``, ``fast_path``,
``relay``, ``redrive`` (then ``origin.dead_letter`` names the dead letter it came from).

Dead letter (topic ``dead_letter_topic``), record key = the retry record's key::

    {
      "format": "cachesync.dead-letter", "v": 1,
      "reason": "exhausted" | "permanent" | "undecodable",
      "error": {"type": ..., "message": ..., "transient": ...},
      "dead_at": "2026-11-01T10:02:07.120Z",
      "source": {"topic": "cachesync.retry", "partition": 3, "offset": 1187, "timestamp": 1793...},
      "consumer": {"group": "cachesync-retry.default", "host": "worker-1", "pid": 77},
      "message": { ...the retry message with its final attempt and error... } | null,
      "raw": null | {"key": "<base64>" | null, "value": "<base64>" | null}
    }

``message`` is present unless ``reason`` is ``undecodable``; then ``raw`` holds
the original record bytes, untouched, so a fixed consumer can be fed them again.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..actions import Action, DeleteKeys
from ..codec import decode_action, encode_action
from ..errors import DecodeError, TransientError

__all__ = [
    "DEAD_LETTER_FORMAT",
    "MESSAGE_VERSION",
    "RETRY_FORMAT",
    "DeadLetter",
    "ErrorInfo",
    "RecordRef",
    "RetryMessage",
    "decode_dead_letter",
    "decode_message",
    "encode_dead_letter",
    "encode_message",
    "format_time",
    "message_key",
    "origin",
    "parse_time",
]

RETRY_FORMAT = "cachesync.retry"
DEAD_LETTER_FORMAT = "cachesync.dead-letter"
MESSAGE_VERSION = 1
#: Error messages are cut to this many characters: a dead letter must stay a small record.
MAX_ERROR_CHARS = 2000

REASON_EXHAUSTED = "exhausted"
REASON_PERMANENT = "permanent"
REASON_UNDECODABLE = "undecodable"
REASONS = (REASON_EXHAUSTED, REASON_PERMANENT, REASON_UNDECODABLE)


def format_time(when: dt.datetime) -> str:
    """RFC 3339 UTC with milliseconds: ``2026-11-01T10:00:00.000Z``."""
    utc = when.astimezone(dt.UTC) if when.tzinfo else when.replace(tzinfo=dt.UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def parse_time(text: str) -> dt.datetime:
    """Inverse of :func:`format_time`; naive inputs are taken as UTC."""
    value = dt.datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def from_epoch(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def message_key(action: Action) -> str:
    """The record key that keeps one cache key's (or one document's) actions in order.

    A :class:`DeleteKeys` must hold exactly one key here (the retry queue splits
    them); documents are keyed ``index/doc_id``.
    """
    if isinstance(action, DeleteKeys):
        if len(action.keys) != 1:
            raise ValueError("a retry message carries one cache key; split DeleteKeys first")
        return action.keys[0]
    return f"{action.index}/{action.doc_id}"


def origin(component: str, pipeline: str = "default", **extra: Any) -> dict[str, Any]:
    """Where a retry message comes from (for humans reading dead letters)."""
    return {
        "component": component,
        "pipeline": pipeline,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        **extra,
    }


@dataclass(frozen=True)
class ErrorInfo:
    """An error as it travels in a message: its class name, text, and whether it was transient."""

    type: str
    message: str
    transient: bool

    @classmethod
    def of(cls, exc: BaseException) -> ErrorInfo:
        return cls(type(exc).__name__, str(exc)[:MAX_ERROR_CHARS], isinstance(exc, TransientError))

    def encode(self) -> dict[str, Any]:
        return {"type": self.type, "message": self.message, "transient": self.transient}

    @classmethod
    def decode(cls, obj: Any) -> ErrorInfo:
        if not isinstance(obj, Mapping):
            raise DecodeError(f"error must be an object, got {obj!r:.80}")
        return cls(str(obj["type"]), str(obj["message"]), bool(obj.get("transient", False)))

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"


@dataclass(frozen=True)
class RetryMessage:
    """One failed action on its way through the retry topic."""

    action: Action
    attempt: int
    first_failed_at: dt.datetime
    last_failed_at: dt.datetime
    last_error: ErrorInfo | None = None
    origin: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return message_key(self.action)

    def failed_again(self, error: BaseException, at: dt.datetime) -> RetryMessage:
        """This message after one more failed attempt."""
        return replace(
            self, attempt=self.attempt + 1, last_failed_at=at, last_error=ErrorInfo.of(error)
        )


@dataclass(frozen=True)
class RecordRef:
    """Where a record was read: topic, partition, offset and its timestamp (ms)."""

    topic: str
    partition: int
    offset: int
    timestamp: int | None = None

    def encode(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp": self.timestamp,
        }

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True)
class DeadLetter:
    """A retry record that will not be retried again, with everything needed to judge it."""

    reason: str
    error: ErrorInfo
    dead_at: dt.datetime
    source: RecordRef
    message: RetryMessage | None = None
    raw_key: bytes | None = None
    raw_value: bytes | None = None
    consumer: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str | None:
        if self.message is not None:
            return self.message.key
        if self.raw_key is not None:
            return self.raw_key.decode("utf-8", errors="replace")
        return None


def _load(value: bytes | str, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"{what} is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise DecodeError(f"{what} must be a JSON object, got {type(obj).__name__}")
    return obj


def _check_format(obj: Mapping[str, Any], expected: str) -> None:
    if obj.get("format") != expected:
        raise DecodeError(f"not a {expected} message (format={obj.get('format')!r})")
    if obj.get("v") != MESSAGE_VERSION:
        raise DecodeError(
            f"{expected} message version {obj.get('v')!r} is not supported "
            f"(this cachesync reads v{MESSAGE_VERSION}; upgrade the consumer)"
        )


def _message_obj(msg: RetryMessage) -> dict[str, Any]:
    return {
        "format": RETRY_FORMAT,
        "v": MESSAGE_VERSION,
        "key": msg.key,
        "action": encode_action(msg.action),
        "attempt": msg.attempt,
        "first_failed_at": format_time(msg.first_failed_at),
        "last_failed_at": format_time(msg.last_failed_at),
        "last_error": msg.last_error.encode() if msg.last_error is not None else None,
        "origin": dict(msg.origin),
    }


def encode_message(msg: RetryMessage) -> bytes:
    """The record value of a retry message."""
    return json.dumps(_message_obj(msg), separators=(",", ":"), default=str).encode()


def _message_from(obj: Mapping[str, Any]) -> RetryMessage:
    _check_format(obj, RETRY_FORMAT)
    try:
        action = decode_action(obj["action"])
        attempt = obj["attempt"]
        if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 0:
            raise DecodeError(f"attempt must be a non-negative integer, got {attempt!r}")
        if isinstance(action, DeleteKeys) and len(action.keys) != 1:
            raise DecodeError("a retry message must carry exactly one cache key")
        error = obj.get("last_error")
        source = obj.get("origin") or {}
        if not isinstance(source, Mapping):
            raise DecodeError("origin must be an object")
        return RetryMessage(
            action=action,
            attempt=attempt,
            first_failed_at=parse_time(obj["first_failed_at"]),
            last_failed_at=parse_time(obj.get("last_failed_at") or obj["first_failed_at"]),
            last_error=ErrorInfo.decode(error) if error is not None else None,
            origin=dict(source),
        )
    except DecodeError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DecodeError(f"malformed retry message: {type(exc).__name__}: {exc}") from None


def decode_message(value: bytes | str | None) -> RetryMessage:
    """A retry message from a record value; :class:`DecodeError` on anything unexpected."""
    if value is None:
        raise DecodeError("retry record has no value (tombstone)")
    return _message_from(_load(value, "retry record"))


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _unb64(text: Any) -> bytes | None:
    if text is None:
        return None
    try:
        return base64.b64decode(str(text), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DecodeError(f"raw bytes are not base64: {exc}") from None


def encode_dead_letter(letter: DeadLetter) -> bytes:
    """The record value of a dead letter."""
    undecodable = letter.message is None
    obj = {
        "format": DEAD_LETTER_FORMAT,
        "v": MESSAGE_VERSION,
        "reason": letter.reason,
        "error": letter.error.encode(),
        "dead_at": format_time(letter.dead_at),
        "source": letter.source.encode(),
        "consumer": dict(letter.consumer),
        "message": _message_obj(letter.message) if letter.message is not None else None,
        "raw": {"key": _b64(letter.raw_key), "value": _b64(letter.raw_value)}
        if undecodable
        else None,
    }
    return json.dumps(obj, separators=(",", ":"), default=str).encode()


def decode_dead_letter(value: bytes | str | None) -> DeadLetter:
    """A dead letter from a record value; :class:`DecodeError` on anything unexpected."""
    if value is None:
        raise DecodeError("dead-letter record has no value")
    obj = _load(value, "dead-letter record")
    _check_format(obj, DEAD_LETTER_FORMAT)
    try:
        reason = obj["reason"]
        if reason not in REASONS:
            raise DecodeError(f"unknown dead-letter reason {reason!r}")
        src = obj["source"]
        raw = obj.get("raw") or {}
        return DeadLetter(
            reason=reason,
            error=ErrorInfo.decode(obj["error"]),
            dead_at=parse_time(obj["dead_at"]),
            source=RecordRef(
                str(src["topic"]), int(src["partition"]), int(src["offset"]), src.get("timestamp")
            ),
            message=_message_from(obj["message"]) if obj.get("message") is not None else None,
            raw_key=_unb64(raw.get("key")),
            raw_value=_unb64(raw.get("value")),
            consumer=dict(obj.get("consumer") or {}),
        )
    except DecodeError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DecodeError(f"malformed dead letter: {type(exc).__name__}: {exc}") from None
