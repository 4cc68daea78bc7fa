"""Every column type renders alike through SQLAlchemy, the binlog and a fresh SELECT.

Generated rows of every type (:mod:`tests.support.typed_rows`: FLOAT, DOUBLE, a
40-digit DECIMAL, JSON, BIT, SET, ENUM, DATETIME(6), TIMESTAMP in a +08:00
session, negative and >24 h TIME, zero dates, INET6, INET4, UUID, latin1,
utf8mb4, VARBINARY, BINARY) are inserted, updated (from a fresh session, so
the before image is what SQLAlchemy loads back) and deleted through the ORM on
the private MariaDB. The keys the fast path delivers per commit equal the keys
the sidecar plans from the same changes read back with :class:`BinlogSource`,
and the document each INSERT/UPDATE plans equals the document a fresh SELECT
of the row renders through the same canonical functions.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest
from hypothesis import HealthCheck, given, settings
from sqlalchemy import (
    JSON,
    Date,
    DateTime,
    Double,
    Engine,
    Float,
    Integer,
    MetaData,
    Numeric,
    String,
    create_engine,
    event,
    text,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from sqlalchemy.types import UserDefinedType

from cachesync import Projection, Sync
from cachesync.binlog import server
from cachesync.changes import Op
from cachesync.connections import mysql_params, sqlalchemy_url
from cachesync.contrib.sqlalchemy import CacheSyncMixin, install, uninstall
from cachesync.registry import Registry
from tests.support import typed_rows

from .conftest import RUN, RecordingFastPath

pytestmark = pytest.mark.services


class Raw(UserDefinedType[Any]):
    """A column SQLAlchemy passes through untouched (``TIME`` beyond a day, ``INET6``...).

    SQLAlchemy's own ``Time`` loads a MySQL TIME as ``datetime.time`` and wraps
    ``-01:00:00`` to ``23:00:00`` (README); the driver's ``timedelta`` is the stored value.
    """

    cache_ok = True

    def __init__(self, spec: str) -> None:
        self.spec = spec

    def get_col_spec(self, **kw: Any) -> str:
        return self.spec


def build_model(table: str, registry: Registry) -> type[Any]:
    class Base(DeclarativeBase):
        metadata = MetaData()

    prefix = f"sa:{RUN}:types"

    class Typed(CacheSyncMixin, Base):
        __tablename__ = table
        __cachesync_registry__ = registry
        id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
        f: Mapped[Any] = mapped_column(Float, nullable=True)
        d: Mapped[Any] = mapped_column(Double, nullable=True)
        dec: Mapped[Any] = mapped_column(Numeric(40, 20), nullable=True)
        j: Mapped[Any] = mapped_column(JSON, nullable=True)
        b: Mapped[Any] = mapped_column(mysql.BIT(8), nullable=True)
        s: Mapped[Any] = mapped_column(mysql.SET("x", "a", "c"), nullable=True)
        e: Mapped[Any] = mapped_column(mysql.ENUM("x", "a", "c"), nullable=True)
        dt6: Mapped[Any] = mapped_column(mysql.DATETIME(fsp=6), nullable=True)
        ts: Mapped[Any] = mapped_column(mysql.TIMESTAMP(fsp=6), nullable=True)
        tm: Mapped[Any] = mapped_column(Raw("TIME(6)"), nullable=True)
        zd: Mapped[Any] = mapped_column(Date, nullable=True)
        zdt: Mapped[Any] = mapped_column(DateTime, nullable=True)
        ip6: Mapped[Any] = mapped_column(Raw("INET6"), nullable=True)
        ip4: Mapped[Any] = mapped_column(Raw("INET4"), nullable=True)
        u: Mapped[Any] = mapped_column(Raw("UUID"), nullable=True)
        lat: Mapped[Any] = mapped_column(mysql.VARCHAR(40, charset="latin1"), nullable=True)
        u8: Mapped[Any] = mapped_column(String(40), nullable=True)
        bin: Mapped[Any] = mapped_column(mysql.VARBINARY(16), nullable=True)
        bn: Mapped[Any] = mapped_column(mysql.BINARY(4), nullable=True)
        __cachesync__ = Sync(
            keys=typed_rows.key_templates(prefix),
            search=Projection(index=f"sa-types-{RUN}", fields=list(typed_rows.COLUMNS)),
        )

    return Typed


@pytest.fixture
def zoned_engine(mysql_url: str) -> Iterator[Engine]:
    """An engine whose sessions run in +08:00 (the application's session time zone)."""
    engine = create_engine(sqlalchemy_url(mysql_url))

    @event.listens_for(engine, "connect")
    def session_zone(dbapi_connection: Any, record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f"SET SESSION time_zone = '{typed_rows.SESSION_ZONE}'")

    yield engine
    engine.dispose()


def test_every_type_renders_alike_on_the_orm_binlog_and_read_paths(
    zoned_engine: Engine, mysql_url: str
) -> None:
    params = mysql_params(mysql_url)
    registry = Registry()
    table = f"sa_{RUN}_types"
    model = build_model(table, registry)
    with zoned_engine.begin() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS `{table}`"))
        conn.execute(text(typed_rows.ddl(table)))
    reader = pymysql.connect(**params, autocommit=True, init_command=(
        f"SET SESSION time_zone = '{typed_rows.SESSION_ZONE}'"
    ))  # fmt: skip
    conn = server.connect(params)
    try:
        start = server.master_status(conn)
    finally:
        conn.close()
    fast = RecordingFastPath()
    maker = sessionmaker(zoned_engine, expire_on_commit=True)
    install(maker, fast_path=fast)
    steps: list[typed_rows.Step] = []
    ids = iter(range(1, 10**6))
    with reader.cursor() as cur:
        types = typed_rows.column_types(cur, params["database"], table)

    def step(op: Op, id: int, batches: int) -> None:
        with reader.cursor() as cur:
            row = typed_rows.select_row(cur, table, id, types)
        steps.append(typed_rows.Step(op, fast.batches[batches:], row))

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(first=typed_rows.row_values(), second=typed_rows.row_values())
    def write(first: dict[str, Any], second: dict[str, Any]) -> None:
        id = next(ids)
        n = len(fast.batches)
        with maker.begin() as s:
            s.add(model(id=id, **first))
        step(Op.INSERT, id, n)
        n = len(fast.batches)
        with maker.begin() as s:  # a fresh session: the before image is what SQLAlchemy loads
            obj = s.get(model, id)
            for name, value in second.items():
                setattr(obj, name, value)
        step(Op.UPDATE, id, n)
        n = len(fast.batches)
        with maker.begin() as s:
            s.delete(s.get(model, id))
        step(Op.DELETE, id, n)

    try:
        write()
    finally:
        uninstall(maker)
        reader.close()
    typed_rows.compare(
        "SQLAlchemy", steps, registry, types, typed_rows.binlog_changes, params, table, start
    )
    with zoned_engine.begin() as c:
        c.execute(text(f"DROP TABLE `{table}`"))


def test_session_time_zone_is_read_from_the_connection(zoned_engine: Engine) -> None:
    from cachesync.binding import session_zone

    with zoned_engine.connect() as conn:
        zone = session_zone(conn.connection.dbapi_connection)
    assert zone.utcoffset(dt.datetime(2024, 1, 1)) == dt.timedelta(hours=8)
