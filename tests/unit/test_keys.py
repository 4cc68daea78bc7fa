from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachesync.errors import TemplateError
from cachesync.keys import KeyTemplate
from cachesync.values import key_value


def test_parse_collects_fields_once_in_order() -> None:
    t = KeyTemplate.parse("user:{id}:{name}:{id}")
    assert t.fields == ("id", "name")
    assert t.render({"id": 7, "name": "ann"}) == "user:7:ann:7"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("user:{}", "positional"),
        ("user:{0}", "positional"),
        ("user:{user.id}", "plain attribute name"),
        ("user:{a[0]}", "plain attribute name"),
        ("user:{id", "malformed"),
        ("", "non-empty"),
    ],
)
def test_bad_templates_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        KeyTemplate.parse(text)


def test_null_field_renders_no_key_and_names_the_field() -> None:
    t = KeyTemplate.parse("user:by-email:{email}")
    assert t.render({"email": None}) is None
    assert t.null_fields({"email": None}) == ["email"]


def test_format_spec_is_honoured() -> None:
    assert KeyTemplate.parse("o:{id:06d}").render({"id": 42}) == "o:000042"


@pytest.mark.parametrize(
    ("orm", "binlog"),
    [
        (True, 1),
        (False, 0),
        (Decimal("1.50"), Decimal("1.5")),
        (Decimal("10"), Decimal("10.00")),
        (b"abc", "abc"),
        (dt.datetime(2024, 1, 2, 3, 4, 5), dt.datetime(2024, 1, 2, 3, 4, 5)),
    ],
)
def test_orm_and_binlog_values_give_the_same_key(orm: object, binlog: object) -> None:
    t = KeyTemplate.parse("k:{v}")
    assert t.render({"v": orm}) == t.render({"v": binlog})


@given(st.decimals(allow_nan=False, allow_infinity=False, places=4))
def test_decimal_trailing_zeros_do_not_change_the_key(d: Decimal) -> None:
    assert key_value(d) == key_value(Decimal(str(d) + "0" if "." in str(d) else str(d)))


def test_composite_default_ids_are_injective() -> None:
    from hypothesis import given
    from hypothesis import strategies as st

    template = KeyTemplate.composite(("a", "b"))
    assert template.render({"a": "a", "b": "b:c"}) != template.render({"a": "a:b", "b": "c"})
    assert KeyTemplate.composite(("id",)).render({"id": "x:y"}) == "x:y"  # one column: unchanged

    text = st.text(alphabet=st.sampled_from("ab:\\"), max_size=6)

    @given(text, text, text, text)
    def injective(a1: str, b1: str, a2: str, b2: str) -> None:
        if (a1, b1) != (a2, b2):
            assert template.render({"a": a1, "b": b1}) != template.render({"a": a2, "b": b2})

    injective()


def test_binary_key_values_render_byte_exactly() -> None:
    from cachesync.keys import wire_key

    template = KeyTemplate.parse("blob:{v}")
    raw = b"\xff\xfe-ok-\xc3\xa9"
    key = template.render({"v": raw})
    assert key is not None and wire_key(key) == b"blob:" + raw
    assert template.render({"v": bytearray(raw)}) == key == template.render({"v": memoryview(raw)})


def test_document_ids_from_binary_keys_are_valid_text() -> None:
    from cachesync.keys import document_id

    key = KeyTemplate.parse("{v}").render({"v": b"a\xffb"})
    assert key is not None
    assert document_id(key) == "a\\xffb" and document_id(key).encode("utf-8")
    assert document_id("plain:1") == "plain:1" and document_id("caf\u00e9") == "caf\u00e9"
