"""The same Django model renders the same keys on the fast path and in the binlog sidecar.

Generated rows are written through the ORM (insert, update of every field,
delete); the fast path's keys for each write are recorded, then the very same
changes are read back from MariaDB's binlog with the sidecar's
:class:`~cachesync.binlog.source.BinlogSource` and planned with :func:`plan`. Both
must name the same keys: UUIDs stored as char(32), aware datetimes stored as
naive UTC, booleans as TINYINT, decimals rounded to their column, ``db_column``
and foreign keys by name or attname, ``{pk}``.
"""

from __future__ import annotations

import datetime as dt
import random
import time
import uuid
from decimal import Decimal
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachesync.actions import DeleteKeys
from cachesync.binlog import server
from cachesync.binlog.checkpoint import ResumePoint
from cachesync.binlog.source import BinlogSource
from cachesync.changes import Op
from cachesync.connections import mysql_params
from cachesync.contrib.django.conf import mysql_url_from_database
from cachesync.contrib.django.declarations import table_for
from cachesync.fastpath import fast_path
from cachesync.planning import plan
from cachesync.registry import Registry
from tests.contrib.django.testapp.models import Typed

pytestmark = pytest.mark.services

ZONES = [
    dt.UTC,
    dt.timezone(dt.timedelta(hours=5, minutes=30)),
    dt.timezone(dt.timedelta(hours=-8)),
]


def typed_values(owners: list[int]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "code": st.uuids(version=4),
            "flag": st.booleans(),
            # three places for a DECIMAL(10, 2) column: the database rounds the third away
            "amount": st.decimals(
                min_value=Decimal("-9999999"),
                max_value=Decimal("9999999"),
                places=3,
                allow_nan=False,
                allow_infinity=False,
            ),
            "day": st.dates(min_value=dt.date(1000, 1, 1), max_value=dt.date(9999, 12, 31)),
            "at": st.none()
            | st.datetimes(
                min_value=dt.datetime(1001, 1, 1),
                max_value=dt.datetime(9998, 12, 31),
                timezones=st.sampled_from(ZONES),
            ),
            "label": st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=30),
            "owner_id": st.none() | st.sampled_from(owners),
        }
    )


def _master_position(params: dict[str, Any]) -> tuple[str, int]:
    conn = server.connect(params)
    try:
        return server.master_status(conn)
    finally:
        conn.close()


def _binlog_changes(
    params: dict[str, Any], table: Any, start: tuple[str, int], count: int
) -> list[Any]:
    """The next *count* changes of *table*'s table, read by the sidecar's BinlogSource."""
    registry = Registry()
    registry.add(table.spec)
    changes: list[Any] = []
    source = BinlogSource(
        params, registry, server_id=random.randint(20_000, 60_000), start=ResumePoint(*start)
    )
    deadline = time.monotonic() + 60
    try:
        while len(changes) < count and time.monotonic() < deadline:
            changes.extend(c for c in source.poll(500, 1.0) if c.table == table.spec.table)
    finally:
        source.close()
    return changes


def _planned_keys(change: Any, spec: Any) -> set[str]:
    return {k for a in plan(change, spec) if isinstance(a, DeleteKeys) for k in a.keys}


@pytest.fixture
def mysql(clean: Any) -> dict[str, Any]:
    # The Django database itself, whatever CACHESYNC_MYSQL_URL the environment holds.
    url = mysql_url_from_database("default", django_settings.DATABASES)
    assert url is not None
    return mysql_params(url)


def test_orm_writes_and_binlog_rows_render_identical_keys(
    mysql: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    owners = [User.objects.create(username=f"owner{i}").pk for i in range(3)]
    table = table_for(Typed)
    assert table is not None
    start = _master_position(mysql)
    recorded: list[set[str]] = []
    monkeypatch.setattr(fast_path, "deliver", lambda keys: recorded.append(set(keys)))
    ops: list[Op] = []

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(first=typed_values(owners), second=typed_values(owners))
    def write(first: dict[str, Any], second: dict[str, Any]) -> None:
        obj = Typed.objects.create(**first)
        for name, value in second.items():
            setattr(obj, name, value)
        obj.save()
        Typed.objects.get(pk=obj.pk).delete()  # a fresh instance: values as the DB has them
        ops.extend([Op.INSERT, Op.UPDATE, Op.DELETE])

    write()
    assert len(recorded) == len(ops) >= 3 * 10
    changes = _binlog_changes(mysql, table, start, len(ops))
    assert [c.op for c in changes] == ops
    for fast_keys, change in zip(recorded, changes, strict=True):
        binlog_keys = _planned_keys(change, table.spec)
        # Django's UUIDField is MariaDB's native UUID type: 16 bytes in the binlog.
        assert set(fast_keys) == set(binlog_keys), (change, fast_keys, binlog_keys)
        assert len(fast_keys) == len(binlog_keys)


def test_native_uuid_column_keys(mysql: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    table = table_for(Typed)
    assert table is not None
    start = _master_position(mysql)
    recorded: list[set[str]] = []
    monkeypatch.setattr(fast_path, "deliver", lambda keys: recorded.append(set(keys)))
    Typed.objects.create(code=uuid.uuid4(), amount=Decimal("1"), day=dt.date(2024, 1, 1))
    (change,) = _binlog_changes(mysql, table, start, 1)
    assert recorded == [_planned_keys(change, table.spec)]
