"""The canonical forms of :mod:`cachesync.values`, case by case (the property tests on
MariaDB, ``tests/contrib/*/test_types_property.py``, check them across paths)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import struct
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachesync.values import (
    ColumnType,
    column_type,
    float32,
    json_value,
    key_value,
    mysql_latin1,
    stored,
    zone_from,
)


def key(sql: str, value: Any, **kw: Any) -> Any:
    return key_value(stored(column_type(sql), value, **kw))


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("double precision", "double"),
        ("FLOAT(53)", "double"),
        ("float", "float"),
        ("inet6", "inet6"),
        ("bigint AUTO_INCREMENT", "int"),
        ("varchar(40) character set latin1", "text"),
        ("longblob", "blob"),
        ("geometry", "other"),
    ],
)
def test_column_types(sql: str, kind: str) -> None:
    assert column_type(sql).kind == kind


def test_parsed_details() -> None:
    assert column_type("set('x','it''s')").members == ("x", "it's")
    assert column_type("decimal(40,20)").scale == 20
    assert column_type("TIMESTAMP(6)").fsp == 6
    assert column_type("binary(4)").length == 4


def test_float_renders_its_shortest_float32_decimal() -> None:
    widened = struct.unpack("<f", struct.pack("<f", 1.1))[0]
    assert widened == 1.100000023841858
    assert key("float", widened) == key("float", 1.1) == key("float", "1.1") == "1.1"
    assert key("double", 1.1) == "1.1" and key("double", Decimal("5")) == "5.0"


@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_float32_round_trips(value: float) -> None:
    assert struct.pack("<f", float32(value)) == struct.pack("<f", value)


def test_bit_set_enum_json() -> None:
    assert key("bit(8)", b"\x05") == key("bit(8)", "00000101") == key("bit(8)", 5) == 5
    assert key("set('x','a','c')", {"c", "x"}) == key("set('x','a','c')", "c,X") == "x,c"
    assert key("set('x','a','c')", set()) == ""
    assert key("enum('x','A')", "a") == "A"
    text = '{"b": 1, "a": [1, 2.50, "é"]}'
    assert (
        key("json", text) == key("json", {"a": [1, 2.5, "é"], "b": 1}) == '{"a":[1,2.5,"é"],"b":1}'
    )
    assert json_value(stored(ColumnType("json"), text)) == {"a": [1, 2.5, "é"], "b": 1}


def test_decimal_keeps_every_digit() -> None:
    many = Decimal("-12345678901234567890.12345678901234567890")
    assert key("decimal(40,20)", many) == "-12345678901234567890.1234567890123456789"
    assert key("decimal(10,2)", Decimal("-0.004")) == "0"
    assert key("decimal(10,2)", Decimal("1.005")) == "1.01"


def test_temporal_forms_and_zero_dates() -> None:
    assert key("date", "0000-00-00") == "0000-00-00"
    assert key("datetime", "0000-00-00 00:00:00") == "0000-00-00T00:00:00"
    assert key("datetime(6)", "2024-01-00 10:11:12.500000") == "2024-01-00T10:11:12.500000"
    assert key("datetime", dt.datetime(2024, 1, 1, 0, 0, 0, 999_999)) == "2024-01-01T00:00:00"
    assert key("date", "2024-02-03") == key("date", dt.date(2024, 2, 3)) == "2024-02-03"
    assert key("time(6)", dt.timedelta(days=-35, seconds=3601)) == "-838:59:59"
    assert key("time", dt.time(1, 2, 3)) == key("time", "01:02:03") == "01:02:03"
    assert key("time(6)", "-00:00:00.5") == "-00:00:00.500000"


def test_timestamp_is_utc_whatever_the_session_zone() -> None:
    plus8 = zone_from("+08:00", "UTC", 0)
    wall = dt.datetime(2024, 1, 1, 8, 0, 0)
    assert (
        key("timestamp", wall, zone=plus8)
        == key("timestamp", dt.datetime(2024, 1, 1))
        == ("2024-01-01T00:00:00")
    )
    assert key("timestamp", "1970-01-01 08:00:00", zone=plus8) == "0000-00-00T00:00:00"
    assert key("timestamp", "0000-00-00 00:00:00") == "0000-00-00T00:00:00"


def test_session_zones() -> None:
    assert zone_from("SYSTEM", "UTC", 0) is dt.UTC
    assert zone_from("Europe/Berlin", "UTC", 0).utcoffset(dt.datetime(2024, 7, 1)) == (
        dt.timedelta(hours=2)
    )
    assert zone_from("SYSTEM", "CST", -21600).utcoffset(None) == dt.timedelta(hours=-6)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("::1", "::1"),
        ("0:0:0:0:0:0:0:1", "::1"),
        ("::ffff:1.2.3.4", "::ffff:1.2.3.4"),  # as MariaDB prints it
        ("::1.2.3.4", "::1.2.3.4"),
        ("2001:DB8::", "2001:db8::"),
    ],
)
def test_inet6_text(text: str, canonical: str) -> None:
    assert key("inet6", text) == canonical
    assert key("inet6", ipaddress.IPv6Address(text).packed) == canonical


def test_inet4_uuid_binary_latin1() -> None:
    assert key("inet4", b"\x01\x02\x03\x04") == key("inet4", "1.2.3.4") == "1.2.3.4"
    u = uuid.uuid4()
    assert key("uuid", u.bytes) == key("uuid", str(u).upper()) == key("uuid", u) == str(u)
    assert stored(column_type("binary(4)"), b"ab") == b"ab\0\0"
    assert mysql_latin1(b"\x80\x81\xe9") == "€\x81é"
    assert key("char(5)", "ab  ") == "ab"
