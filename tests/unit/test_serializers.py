"""The read path's value formats: round trips, lease markers, Django RedisCache compatibility."""

from __future__ import annotations

import datetime as dt
import pickle
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachesync.errors import DecodeError
from cachesync.serializers import (
    DjangoCacheSerializer,
    JsonSerializer,
    ModelCodec,
    PickleSerializer,
    register_model_codec,
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
    | st.decimals(allow_nan=False, allow_infinity=False)
    | st.datetimes(timezones=st.none() | st.timezones())
    | st.dates()
    | st.times()
    | st.timedeltas()
    | st.uuids()
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    | st.dictionaries(st.integers(), inner, max_size=3),
    max_leaves=12,
)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dt.datetime) and isinstance(b, dt.datetime):
        # The same instant with the same offset. Compared in UTC, because an aware time in
        # a zone's DST fold compares unequal to every time of another zone (PEP 495), the
        # fixed offset the JSON form carries included.
        same_instant = (
            a.astimezone(dt.UTC) == b.astimezone(dt.UTC)
            if a.tzinfo is not None and b.tzinfo is not None
            else a == b
        )
        return same_instant and a.utcoffset() == b.utcoffset() and type(a) is type(b)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        return type(b) is dict and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@given(values)
def test_json_round_trips_row_values_with_their_types(value: Any) -> None:
    s = JsonSerializer()
    data = s.dumps(value)
    assert not data.startswith(s.marker)
    assert _same(s.loads(data), value)


def test_json_keeps_a_dict_that_uses_the_tag_key_and_rejects_what_it_cannot_store() -> None:
    s = JsonSerializer()
    tricky = {"__cachesync__": "decimal", "v": "1"}
    assert s.loads(s.dumps(tricky)) == tricky
    assert s.loads(s.dumps(Decimal("-0.00"))).as_tuple() == Decimal("-0.00").as_tuple()
    with pytest.raises(TypeError, match="opt in to PickleSerializer"):
        s.dumps(object())
    with pytest.raises(DecodeError):
        s.loads(b"not json")


class Thing:
    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)


def test_json_stores_registered_model_instances() -> None:
    register_model_codec(
        Thing, ModelCodec("tests.Thing", lambda t: dict(t.__dict__), lambda f: Thing(**f))
    )
    s = JsonSerializer()
    back = s.loads(s.dumps([Thing(id=1, price=Decimal("2.50"), code=uuid.UUID(int=3))]))
    assert type(back[0]) is Thing and back[0].price == Decimal("2.50")
    assert back[0].code == uuid.UUID(int=3)


@given(values)
def test_pickle_round_trips(value: Any) -> None:
    s = PickleSerializer()
    assert not s.dumps(value).startswith(s.marker)
    assert _same(s.loads(s.dumps(value)), value)


@given(values)
def test_django_format_is_byte_compatible_with_djangos_redis_cache(value: Any) -> None:
    from django.core.cache.backends.redis import RedisSerializer

    ours, django = DjangoCacheSerializer(), RedisSerializer()
    theirs = django.dumps(value)  # Django returns ints unencoded; redis-py stores str(int)
    theirs_bytes = str(theirs).encode() if type(theirs) is int else theirs
    assert ours.dumps(value) == theirs_bytes
    assert _same(django.loads(ours.dumps(value)), value)
    assert _same(ours.loads(theirs_bytes), value)


def test_the_django_lease_marker_reads_as_a_miss_through_djangos_cache() -> None:
    from django.core.cache.backends.redis import RedisSerializer

    marker = DjangoCacheSerializer.marker + b"0123456789abcdef"
    assert RedisSerializer().loads(marker) is None
    assert pickle.loads(marker) is None
