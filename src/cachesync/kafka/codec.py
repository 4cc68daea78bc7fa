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

**Validation.** :func:`decode_message` is total: for any record value it returns a
:class:`RetryMessage` or raises :class:`~cachesync.errors.DecodeError`, never
another exception. ``undecodable`` covers every record it refuses, whether the
bytes are not JSON or one field is out of range; ``error.message`` names the
field. A decoded message satisfies:

* ``format`` and ``v`` are exactly the ones above (``v`` an integer, not ``true``);
* ``action`` passes :func:`cachesync.codec.decode_action` (positions with a
  version in ``1..2**63-1``, keys and ids that :func:`cachesync.keys.wire_key`
  can encode, documents that are JSON objects...) and carries one cache key;
* ``key``, when present, equals the action's key (:func:`message_key`);
* ``attempt`` is an integer in ``0 .. MAX_ATTEMPT`` (not a boolean);
* ``first_failed_at``/``last_failed_at`` parse as times (normalised to UTC). A
  time in the future is NOT refused here (clocks drift); the scheduler clamps
  it to now, so no record can delay its key beyond ``policy.max_backoff``;
* ``last_error`` and ``origin`` are diagnostics, never a reason to refuse work:
  a malformed ``last_error`` decodes as ``None``, a non-object ``origin`` as ``{}``.
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
from ..codec import check_key, decode_action, encode_action, load_json
from ..errors import DecodeError, TransientError
from ..keys import wire_key

__all__ = [
    "DEAD_LETTER_FORMAT",
    "MAX_ATTEMPT",
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
#: The largest ``attempt`` a retry message may claim: far above any policy, far below trouble.
MAX_ATTEMPT = 10**6

REASON_EXHAUSTED = "exhausted"
REASON_PERMANENT = "permanent"
REASON_UNDECODABLE = "undecodable"
REASONS = (REASON_EXHAUSTED, REASON_PERMANENT, REASON_UNDECODABLE)


def format_time(when: dt.datetime) -> str:
    """RFC 3339 UTC with milliseconds: ``2026-11-01T10:00:00.000Z``.

    Years below 1000 keep four digits (``strftime("%Y")`` would drop them on
    glibc and write a time :func:`parse_time` cannot read back).
    """
    utc = when.astimezone(dt.UTC) if when.tzinfo else when.replace(tzinfo=dt.UTC)
    return utc.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def parse_time(text: Any) -> dt.datetime:
    """Inverse of :func:`format_time`, as an aware UTC time; naive inputs are taken as UTC.

    Raises :class:`DecodeError` for anything that is not an ISO 8601 string or
    whose UTC form is out of range (``0001-01-01T00:00+01:00``): normalising here
    means no later ``astimezone`` can raise ``OverflowError``.
    """
    if not isinstance(text, str):
        raise DecodeError(f"a time must be an ISO 8601 string, got {text!r:.80}")
    try:
        value = dt.datetime.fromisoformat(text)
        return value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)
    except (ValueError, OverflowError) as exc:
        raise DecodeError(f"time {text!r:.80} is not usable: {exc}") from None


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
        """An error from its JSON form; :class:`DecodeError` unless type and message are strings."""
        if not isinstance(obj, Mapping):
            raise DecodeError(f"error must be an object, got {obj!r:.80}")
        kind, message, transient = obj.get("type"), obj.get("message"), obj.get("transient", False)
        if not isinstance(kind, str) or not isinstance(message, str):
            raise DecodeError(f"error needs string type and message, got {obj!r:.80}")
        return cls(kind[:200], message[:MAX_ERROR_CHARS], transient is True)

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
        """The key as text, for humans (an undecodable record's raw key decoded leniently)."""
        if self.message is not None:
            return self.message.key
        if self.raw_key is not None:
            return self.raw_key.decode("utf-8", errors="replace")
        return None

    @property
    def record_key(self) -> bytes | None:
        """The dead letter's Kafka record key: the retry record's own key bytes.

        ``wire_key``, not ``str.encode``: a key rendered from a non-UTF-8 value
        holds lone surrogates, and ``encode()`` would raise on it.
        """
        if self.message is not None:
            return wire_key(self.message.key)
        return self.raw_key


def _load(value: bytes | str, what: str) -> dict[str, Any]:
    obj = load_json(value, what)
    if not isinstance(obj, dict):
        raise DecodeError(f"{what} must be a JSON object, got {type(obj).__name__}")
    return obj


def _check_format(obj: Mapping[str, Any], expected: str) -> None:
    if obj.get("format") != expected:
        raise DecodeError(f"not a {expected} message (format={obj.get('format')!r})")
    version = obj.get("v")
    if type(version) is not int or version != MESSAGE_VERSION:  # True == 1 in Python
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


def _attempt(value: Any) -> int:
    if type(value) is not int or not 0 <= value <= MAX_ATTEMPT:  # bool is an int subclass
        raise DecodeError(f"attempt must be an integer in 0..{MAX_ATTEMPT}, got {value!r:.40}")
    return value


def _last_error(value: Any) -> ErrorInfo | None:
    """Diagnostics only: a malformed ``last_error`` is forgotten, not a reason to drop the work."""
    if value is None:
        return None
    try:
        return ErrorInfo.decode(value)
    except DecodeError:
        return None


def _message_from(obj: Any) -> RetryMessage:
    if not isinstance(obj, Mapping):
        raise DecodeError(f"a retry message must be an object, got {type(obj).__name__}")
    _check_format(obj, RETRY_FORMAT)
    try:
        action = decode_action(obj.get("action"))
        if isinstance(action, DeleteKeys) and len(action.keys) != 1:
            raise DecodeError("a retry message must carry exactly one cache key")
        key = message_key(action)
        stated = obj.get("key")
        if stated is not None and check_key(stated, "key") != key:
            raise DecodeError(f"key {stated!r:.80} is not the action's key {key!r:.80}")
        first = parse_time(obj.get("first_failed_at"))
        last_text = obj.get("last_failed_at")
        source = obj.get("origin")
        return RetryMessage(
            action=action,
            attempt=_attempt(obj.get("attempt")),
            first_failed_at=first,
            last_failed_at=parse_time(last_text) if last_text is not None else first,
            last_error=_last_error(obj.get("last_error")),
            origin=dict(source) if isinstance(source, Mapping) else {},
        )
    except DecodeError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError) as exc:
        # not expected after the checks above; kept so decoding stays total
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
    if not isinstance(text, str):
        raise DecodeError(f"raw bytes must be a base64 string, got {type(text).__name__}")
    try:
        return base64.b64decode(text, validate=True)
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


def _int(value: Any, what: str) -> int:
    if type(value) is not int:
        raise DecodeError(f"{what} must be an integer, got {value!r:.40}")
    return value


def decode_dead_letter(value: bytes | str | None) -> DeadLetter:
    """A dead letter from a record value; :class:`DecodeError` on anything unexpected (total)."""
    if value is None:
        raise DecodeError("dead-letter record has no value")
    obj = _load(value, "dead-letter record")
    _check_format(obj, DEAD_LETTER_FORMAT)
    try:
        reason = obj.get("reason")
        if reason not in REASONS:
            raise DecodeError(f"unknown dead-letter reason {reason!r:.40}")
        src = obj.get("source")
        if not isinstance(src, Mapping):
            raise DecodeError("dead letter source must be an object")
        timestamp = src.get("timestamp")
        raw = obj.get("raw") or {}
        consumer = obj.get("consumer") or {}
        if not isinstance(raw, Mapping) or not isinstance(consumer, Mapping):
            raise DecodeError("dead letter raw and consumer must be objects")
        topic = src.get("topic")
        if not isinstance(topic, str):
            raise DecodeError("dead letter source.topic must be a string")
        return DeadLetter(
            reason=reason,
            error=ErrorInfo.decode(obj.get("error")),
            dead_at=parse_time(obj.get("dead_at")),
            source=RecordRef(
                topic,
                _int(src.get("partition"), "source.partition"),
                _int(src.get("offset"), "source.offset"),
                None if timestamp is None else _int(timestamp, "source.timestamp"),
            ),
            message=_message_from(obj["message"]) if obj.get("message") is not None else None,
            raw_key=_unb64(raw.get("key")),
            raw_value=_unb64(raw.get("value")),
            consumer=dict(consumer),
        )
    except DecodeError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError) as exc:
        raise DecodeError(f"malformed dead letter: {type(exc).__name__}: {exc}") from None
