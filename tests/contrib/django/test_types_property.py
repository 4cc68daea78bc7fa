"""Every column type renders alike through Django, the binlog and a fresh SELECT.

The rows of :mod:`tests.support.typed_rows` written through the Django ORM
(``USE_TZ=True``) in a session whose time zone is +08:00: Django's own fields
where it has them (FloatField is DOUBLE, DecimalField, JSONField, DateTimeField,
UUIDField, CharField, BinaryField), small custom fields by their ``db_type``
where it has not (FLOAT, BIT, SET, ENUM, TIMESTAMP, TIME, zero-able DATE/DATETIME,
INET6, INET4, latin1, BINARY). TIME stays within 00:00..23:59:59 here: Django's
MySQL backend loads every TIME as ``datetime.time`` and raises on a negative or
>24 h one (README), which leaves the connection unusable. Inserted, updated and deleted;
the fast path's keys per commit equal the sidecar's keys from the binlog, and
the planned documents equal a fresh SELECT rendered by the same functions.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pymysql
import pytest
from django.conf import settings as django_settings
from django.db import connection, models
from hypothesis import HealthCheck, given, settings

from cachesync import Projection
from cachesync.binlog import server
from cachesync.changes import Op
from cachesync.connections import mysql_params
from cachesync.contrib.django import register, unregister
from cachesync.contrib.django.conf import mysql_url_from_database
from cachesync.contrib.django.declarations import state
from cachesync.fastpath import fast_path
from tests.support import typed_rows

pytestmark = pytest.mark.services

TABLE = "csdj_types"


class Sql(models.Field):  # type: ignore[type-arg]
    """A field Django passes through untouched, declared by its SQL type."""

    def __init__(self, sql: str = "", **kwargs: Any) -> None:
        self.sql = sql
        super().__init__(null=True, **kwargs)

    def db_type(self, connection: Any) -> str:
        return self.sql


class SetField(Sql):
    def get_prep_value(self, value: Any) -> Any:
        return ",".join(value) if isinstance(value, (set, frozenset)) else value


class TypedRow(models.Model):
    f = Sql("float")
    d = models.FloatField(null=True)
    dec = models.DecimalField(max_digits=40, decimal_places=20, null=True)
    j = models.JSONField(null=True)
    b = Sql("bit(8)")
    s = SetField("set('x','a','c')")
    e = Sql("enum('x','a','c')")
    dt6 = models.DateTimeField(null=True)
    ts = type(
        "TimestampField", (models.DateTimeField,), {"db_type": lambda self, c: "timestamp(6)"}
    )(null=True)
    tm = Sql("time(6)")
    zd = Sql("date")
    zdt = Sql("datetime")
    ip6 = Sql("inet6")
    ip4 = Sql("inet4")
    u = models.UUIDField(null=True)
    lat = Sql("varchar(40) character set latin1")
    u8 = models.CharField(max_length=40, null=True)
    bin = models.BinaryField(null=True)
    bn = Sql("binary(4)")

    class Meta:
        app_label = "testapp"
        managed = False
        db_table = TABLE


def _django_values(values: dict[str, Any]) -> dict[str, Any]:
    # USE_TZ=True: Django wants aware datetimes (a naive one is read as UTC, with a warning).
    dt6 = values["dt6"]
    return {**values, "dt6": dt6.replace(tzinfo=dt.UTC) if dt6 is not None else None}


def test_every_type_renders_alike_on_the_orm_binlog_and_read_paths(
    clean: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = mysql_url_from_database("default", django_settings.DATABASES)
    assert url is not None
    params = mysql_params(url)
    connection.close()  # a fresh session in +08:00, asked for its zone from the start
    with connection.cursor() as cursor:
        cursor.execute(f"SET SESSION time_zone = '{typed_rows.SESSION_ZONE}'")
        cursor.execute(f"DROP TABLE IF EXISTS `{TABLE}`")
        cursor.execute(typed_rows.ddl(TABLE))
    register(
        TypedRow,
        keys=typed_rows.key_templates("dj:types"),
        search=Projection(index="csdj-types", fields=list(typed_rows.COLUMNS)),
    )
    reader = pymysql.connect(**params, autocommit=True, init_command=(
        f"SET SESSION time_zone = '{typed_rows.SESSION_ZONE}'"
    ))  # fmt: skip
    conn = server.connect(params)
    try:
        start = server.master_status(conn)
    finally:
        conn.close()
    batches: list[list[str]] = []
    monkeypatch.setattr(fast_path, "deliver", lambda keys: batches.append(list(keys)))
    steps: list[typed_rows.Step] = []
    with reader.cursor() as cur:
        types = typed_rows.column_types(cur, params["database"], TABLE)

    def step(op: Op, id: int, seen: int) -> None:
        with reader.cursor() as cur:
            row = typed_rows.select_row(cur, TABLE, id, types)
        steps.append(typed_rows.Step(op, batches[seen:], row))

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        first=typed_rows.row_values(timestamps_aware=True, times_of_day=True),
        second=typed_rows.row_values(timestamps_aware=True, times_of_day=True),
    )
    def write(first: dict[str, Any], second: dict[str, Any]) -> None:
        n = len(batches)
        obj = TypedRow.objects.create(**_django_values(first))
        step(Op.INSERT, obj.pk, n)
        n = len(batches)
        obj = TypedRow.objects.get(pk=obj.pk)  # values as Django loads them
        for name, value in _django_values(second).items():
            setattr(obj, name, value)
        obj.save()
        step(Op.UPDATE, obj.pk, n)
        n = len(batches)
        TypedRow.objects.get(pk=obj.pk).delete()
        step(Op.DELETE, obj.pk, n)

    try:
        write()
        registry = state.registry
        typed_rows.compare(
            "Django", steps, registry, types, typed_rows.binlog_changes, params, TABLE, start,
            spec=state.tables[TypedRow].spec,
        )  # fmt: skip
    finally:
        unregister(TypedRow)
        reader.close()
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS `{TABLE}`")
        connection.close()  # the next test's session is in the server's zone again
