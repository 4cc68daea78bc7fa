"""The model-binding rules both ORMs share: needed attributes, stored forms, partial images."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from cachesync import Sync
from cachesync.binding import (
    collect_change,
    needed_attributes,
    stored_bool,
    stored_decimal,
    stored_enum,
    stored_fraction,
    stored_uuid,
)
from cachesync.registry import TableSpec, resolve
from cachesync.transactions import Collected
from cachesync.values import key_value

COLUMNS = {"id": "id", "username": "user_name", "email": "email", "pk": "id"}


def spec(sync: Sync) -> TableSpec:
    return resolve("tests.User", sync, table="users", columns=COLUMNS, primary_key=["id"])


def test_needed_attributes_are_the_template_fields_in_column_order() -> None:
    users = spec(Sync(keys=["user:by-name:{username}", "user:{pk}"]))
    assert needed_attributes(users, ["id", "username", "email"]) == ("id", "username")


def test_needed_attributes_are_every_column_with_invalidates() -> None:
    users = spec(Sync(keys=["user:{id}"], invalidates=lambda before, after: []))
    assert needed_attributes(users, ["id", "username", "email"]) == ("id", "username", "email")


def test_a_zero_decimal_is_stored_without_its_sign() -> None:
    # MariaDB 10.11 gives DECIMAL(10,2) -0.00 and -0.004 back as 0.00 (checked on the
    # private instance); every path must render the key of what the database holds.
    for value in (Decimal("-0.00"), Decimal("-0"), Decimal("-0.004"), Decimal("0.00")):
        stored = stored_decimal(value, 2)
        assert str(stored) == "0.00"
        assert key_value(stored) == "0"
    assert str(stored_decimal(Decimal("-1.005"), 2)) == "-1.01"  # half away from zero
    assert stored_decimal(Decimal("NaN"), 2).is_nan()
    assert stored_decimal(Decimal("1.234"), None) == Decimal("1.234")
    assert stored_decimal(1.5, 2) == 1.5


@given(st.decimals(min_value=-(10**6), max_value=10**6, places=4))
def test_stored_decimals_render_like_the_value_the_database_returns(value: Decimal) -> None:
    stored = stored_decimal(value, 2)
    assert stored == value.quantize(Decimal("0.01"), rounding="ROUND_HALF_UP")
    assert not (stored.is_zero() and stored.is_signed())


def test_the_other_stored_forms() -> None:
    class Role(enum.Enum):
        ADMIN = "a"

    token = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert stored_bool(True) == 1 and stored_bool(0) == 0
    assert stored_uuid(token, native=False) == token.hex
    assert stored_uuid(token, native=True) == str(token)
    assert stored_enum(Role.ADMIN) == "a" and stored_enum(Role.ADMIN, by_name=True) == "ADMIN"
    at = dt.datetime(2024, 1, 1, 12, 0, 0, 999_999)
    assert stored_fraction(at, 0, round_half_up=False) == at.replace(microsecond=0)
    assert stored_fraction(at, 0, round_half_up=True) == dt.datetime(2024, 1, 1, 12, 0, 1)
    assert stored_fraction(dt.time(23, 59, 59, 600_000), 0, round_half_up=True) == dt.time(0)
    assert stored_fraction(at, 6, round_half_up=True) is at


def test_a_partial_image_renders_only_the_keys_it_can() -> None:
    users = spec(Sync(keys=["user:{id}", "user:by-name:{username}"]))
    level = Collected()
    collect_change(level, users, ("id", "username"), {"id": 3}, None)
    assert list(level.keys) == ["user:3"]


def test_a_partial_image_never_reaches_invalidates() -> None:
    seen: list[object] = []

    def invalidates(before: object, after: object) -> list[str]:
        seen.append((before, after))
        return ["users:list"]

    users = spec(Sync(keys=["user:{id}"], invalidates=invalidates))
    level = Collected()
    collect_change(level, users, ("id", "username", "email"), {"id": 3}, None)
    assert list(level.keys) == ["user:3"] and not level.intents and seen == []
    complete = {"id": 3, "username": "ada", "email": "a@x"}
    collect_change(level, users, ("id", "username", "email"), complete, None)
    assert list(level.intents) == ["users:list"] and len(seen) == 1
    collect_change(level, users, ("id", "username", "email"), complete, None, intents=False)
    assert len(seen) == 1  # intents=False: templates only
