"""Decoding is total: any record value decodes or raises DecodeError, and what decodes is usable.

"Usable" means nothing downstream can trip over it: the action's version is an
Elasticsearch version, its keys become bytes, it encodes again as a retry
message and as a dead letter, and both decode back to the same thing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cachesync import DecodeError, DeleteKeys
from cachesync.codec import MAX_VERSION, decode_action, decode_actions
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
    parse_time,
)
from cachesync.keys import wire_key
from tests.unit.kafka.poison import (
    EDGE_KEYS,
    POISONS,
    RAW_POISONS,
    Poison,
    delete_keys,
    encode,
    index_doc,
    replaced,
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
#: Strings as they arrive from JSON: any code point, lone surrogates included.
any_text = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=()))

#: Every field of a retry message with values of a type it must never accept.
not_text = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.lists(st.integers(), max_size=2)
)
not_int = st.none() | st.booleans() | st.floats() | st.text() | st.lists(st.integers(), max_size=2)
WRONG_TYPES: dict[tuple[str, str], st.SearchStrategy[Any]] = {
    ("keys", "format"): not_text | st.text().filter(lambda s: s != "cachesync.retry"),
    ("keys", "v"): not_int | st.integers().filter(lambda v: v != 1),
    ("keys", "action"): st.none() | st.integers() | st.text() | st.lists(st.text(), max_size=2),
    ("keys", "action.v"): not_int | st.integers().filter(lambda v: v != 1),
    ("keys", "action.keys"): not_text | st.lists(not_text, min_size=1, max_size=1),
    ("keys", "action.position"): st.booleans() | st.integers() | st.lists(st.text(), max_size=2),
    ("keys", "attempt"): not_int | st.integers(max_value=-1) | st.integers(min_value=10**6 + 1),
    ("keys", "first_failed_at"): not_text | st.text(st.characters(categories=("L",))),
    ("keys", "last_failed_at"): st.booleans() | st.integers() | st.lists(st.text(), max_size=2),
    ("doc", "action.index"): not_text | st.just(""),
    ("doc", "action.id"): not_text | st.just(""),
    ("doc", "action.document"): not_text | st.text(),
    ("doc", "action.source"): st.booleans() | st.integers() | st.text() | st.lists(st.text()),
    ("doc", "action.source.pk"): not_text
    | st.dictionaries(
        st.text(min_size=1), st.lists(st.integers(), max_size=2), min_size=1, max_size=2
    ),
}
one_wrong_field = st.sampled_from(sorted(WRONG_TYPES)).flatmap(
    lambda field: st.tuples(st.just(field), WRONG_TYPES[field])
)


def assert_usable(message: RetryMessage) -> None:
    """What every decoded message must allow, whatever the input was."""
    action = message.action
    if action.position is not None:
        assert 1 <= action.position.version <= MAX_VERSION
    if isinstance(action, DeleteKeys):
        assert len(action.keys) == 1
        wire_key(action.keys[0])
    assert 0 <= message.attempt <= 10**6
    assert message.last_failed_at.tzinfo is not None
    wire = encode_message(message)  # times travel in milliseconds: stable after one trip
    assert encode_message(decode_message(wire)) == wire
    letter = DeadLetter(
        "exhausted",
        ErrorInfo("TransientError", "down", True),
        message.last_failed_at,
        RecordRef("retry", 0, 1, None),
        message,
    )
    letter_wire = encode_dead_letter(letter)
    assert encode_dead_letter(decode_dead_letter(letter_wire)) == letter_wire
    assert letter.record_key == wire_key(message.key)


def decode_or_refuse(value: bytes | None) -> RetryMessage | None:
    try:
        message = decode_message(value)
    except DecodeError:
        return None
    assert_usable(message)
    return message


@given(st.binary(max_size=200))
@example(b'{"format":"cachesync.retry","v":1,"attempt":Infinity}')
def test_random_bytes_decode_or_raise_decode_error(value: bytes) -> None:
    decode_or_refuse(value)


@given(json_values)
def test_random_json_decodes_or_raises_decode_error(value: Any) -> None:
    decode_or_refuse(json.dumps(value).encode())
    with pytest.raises(DecodeError):  # an action is just as strict
        decode_action(value)
    # and an outbox payload: [] is an empty payload, anything else is refused
    with contextlib.suppress(DecodeError):
        assert decode_actions(json.dumps(value)) == [] and value == []


@given(one_wrong_field)
@settings(suppress_health_check=[HealthCheck.filter_too_much])
def test_one_wrong_typed_field_is_refused(case: tuple[tuple[str, str], Any]) -> None:
    (base, path), value = case
    if path == "action.position" and base == "keys" and value is None:
        return  # a delete without a position is valid
    with pytest.raises(DecodeError):
        decode_message(Poison("generated", base, path, value).record())


@pytest.mark.parametrize("poison", POISONS, ids=lambda p: p.name)
def test_each_catalogued_poison_is_refused(poison: Poison) -> None:
    with pytest.raises(DecodeError):
        decode_message(poison.record())


@pytest.mark.parametrize("raw", RAW_POISONS, ids=lambda r: repr(r[:20]))
def test_each_raw_poison_is_refused(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_message(raw)


@pytest.mark.parametrize(("key", "options"), EDGE_KEYS, ids=[k for k, _ in EDGE_KEYS])
def test_odd_but_valid_records_decode(key: str, options: dict[str, Any]) -> None:
    message = decode_message(encode(delete_keys(key, **options)))
    assert message.key == key
    assert_usable(message)


def test_a_surrogateescape_key_is_the_exact_bytes_of_the_value() -> None:
    message = decode_message(encode(delete_keys("user:\udcff")))
    assert wire_key(message.key) == b"user:\xff"


@given(key=any_text)
def test_keys_decode_exactly_when_wire_key_can_encode_them(key: str) -> None:
    try:
        key.encode("utf-8", "surrogateescape")
        encodable = True
    except UnicodeEncodeError:
        encodable = False
    message = decode_or_refuse(encode(delete_keys(key)))
    assert (message is not None) == encodable


@given(origin=json_values, last_error=json_values)
def test_diagnostics_never_refuse_a_record(origin: Any, last_error: Any) -> None:
    obj = replaced(replaced(index_doc(), "origin", origin), "last_error", last_error)
    message = decode_message(encode(obj))
    assert_usable(message)
    assert message.origin == (origin if isinstance(origin, dict) else {})


@given(
    attempt=st.integers(0, 10**6),
    # fixed offsets: an ambiguous local time (a DST fold) never compares equal
    # across zones (PEP 495), whatever the codec does
    when=st.datetimes(
        timezones=st.integers(-14 * 60, 14 * 60).map(lambda m: dt.timezone(dt.timedelta(minutes=m)))
    ),
)
def test_valid_attempts_and_times_decode(attempt: int, when: dt.datetime) -> None:
    obj = delete_keys("k", attempt=attempt, failed_at=when.isoformat())
    message = decode_or_refuse(encode(obj))
    try:
        when.astimezone(dt.UTC)
    except OverflowError:
        assert message is None  # no UTC form: refused rather than raising later
        return
    assert message is not None and message.last_failed_at == when


@given(st.datetimes(timezones=st.just(dt.UTC)))
def test_times_round_trip_through_the_wire_form_in_every_year(when: dt.datetime) -> None:
    when = when.replace(microsecond=when.microsecond // 1000 * 1000)
    assert parse_time(format_time(when)) == when


@given(json_values)
def test_random_dead_letters_decode_or_raise_decode_error(value: Any) -> None:
    with pytest.raises(DecodeError):
        decode_dead_letter(json.dumps(value).encode())
    obj = {
        "format": "cachesync.dead-letter",
        "v": 1,
        "reason": "undecodable",
        "error": {"type": "DecodeError", "message": "x"},
        "dead_at": "2026-11-01T10:00:00.000Z",
        "source": {"topic": "t", "partition": value, "offset": 1e400},
    }
    with pytest.raises(DecodeError):
        decode_dead_letter(json.dumps(obj).encode())
