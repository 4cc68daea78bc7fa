"""The same SQLAlchemy model renders the same keys on the fast path and on the binlog path.

Two properties over generated rows:

* without services: keys the hooks render from an ORM instance equal the keys
  :func:`template_keys` renders from the column dict the binlog would give for
  the stored row (``spec.row_from_columns``): ``bool`` as TINYINT 0/1, decimals
  rounded to the column, fractional seconds cut to the column, an ``Enum`` as
  the member NAME, a ``Uuid`` as 32 hex digits, ``TIME`` as ``timedelta``, and an
  attribute (``code``) whose column is named differently (``item_code``);
* on the private MariaDB: rows written through the ORM (insert, update of every
  field, delete), the fast path's delivered keys recorded per commit, then the
  very same changes read back from the binlog with the sidecar's
  :class:`BinlogSource` and planned with :func:`plan`. Both name the same keys.
"""

from __future__ import annotations

import datetime as dt
import enum
import random
import time
import uuid
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import (
    Boolean,
    Date,
    DateTime,
    Engine,
    Integer,
    MetaData,
    Numeric,
    String,
    Time,
    Uuid,
)
from sqlalchemy import Enum as SAEnum
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from cachesync import Sync
from cachesync.actions import DeleteKeys
from cachesync.changes import Op
from cachesync.connections import mysql_params
from cachesync.contrib.sqlalchemy import CacheSyncMixin, install, uninstall
from cachesync.contrib.sqlalchemy.declare import Declared, declared_for
from cachesync.contrib.sqlalchemy.images import collect_change, instance_row
from cachesync.fastpath import Collected
from cachesync.planning import plan, template_keys
from cachesync.registry import Registry

from .conftest import RUN, RecordingFastPath


class Color(enum.Enum):
    RED = "r"  # value != name: SQLAlchemy stores the NAME
    GREEN = "g"


def build_item(table: str, registry: Registry) -> type[Any]:
    class Base(DeclarativeBase):
        metadata = MetaData()

    class Item(CacheSyncMixin, Base):
        __tablename__ = table
        __table_args__ = {"mysql_charset": "utf8mb4", "mariadb_charset": "utf8mb4"}
        __cachesync_registry__ = registry
        id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
        code: Mapped[str] = mapped_column("item_code", String(40))
        flag: Mapped[bool] = mapped_column(Boolean)
        price: Mapped[Decimal] = mapped_column(Numeric(10, 2))
        at: Mapped[dt.datetime] = mapped_column(DateTime)  # DATETIME: whole seconds on MySQL
        at6: Mapped[dt.datetime | None] = mapped_column(
            DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb"), nullable=True
        )
        day: Mapped[dt.date] = mapped_column(Date)
        clock: Mapped[dt.time] = mapped_column(Time)
        color: Mapped[Color] = mapped_column(SAEnum(Color))
        # CHAR(32): MariaDB >= 10.7 would otherwise get its native UUID type, which the
        # binlog carries as 16 raw bytes that BinlogSource does not decode to text yet.
        token: Mapped[uuid.UUID] = mapped_column(Uuid(native_uuid=False))
        note: Mapped[str | None] = mapped_column(String(40), nullable=True)
        __cachesync__ = Sync(
            keys=[
                "item:{id}",
                "item:code:{code}",
                "item:money:{flag}:{price}",
                "item:when:{at}:{at6}:{day}:{clock}",
                "item:kind:{color}:{token}",
                "item:note:{note}",  # NULL: skipped on both paths
            ]
        )

    return Item


def item_values() -> st.SearchStrategy[dict[str, Any]]:
    text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), max_size=20)
    return st.fixed_dictionaries(
        {
            "code": text,
            "flag": st.booleans(),
            # three places into DECIMAL(10, 2): the database rounds the third away
            "price": st.decimals(
                min_value=Decimal("-9999999"),
                max_value=Decimal("9999999"),
                places=3,
                allow_nan=False,
                allow_infinity=False,
            ),
            "at": st.datetimes(
                min_value=dt.datetime(1001, 1, 1), max_value=dt.datetime(9998, 1, 1)
            ),
            "at6": st.none()
            | st.datetimes(min_value=dt.datetime(1001, 1, 1), max_value=dt.datetime(9998, 1, 1)),
            "day": st.dates(min_value=dt.date(1000, 1, 1), max_value=dt.date(9999, 12, 31)),
            "clock": st.times(),
            "color": st.sampled_from(Color),
            "token": st.uuids(version=4),
            "note": st.none() | text,
        }
    )


MARIADB = mysql.dialect(is_mariadb=True)


def binlog_columns(id: int, v: dict[str, Any]) -> dict[str, Any]:
    """The row image MariaDB's binlog carries for these values (column names, stored forms)."""

    def cut(t: Any) -> Any:
        return t.replace(microsecond=0)

    clock = cut(v["clock"])
    price = v["price"].quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    return {
        "id": id,
        "item_code": v["code"],
        "flag": int(v["flag"]),
        # MariaDB keeps no sign on a zero: -0.001 and -0.00 come back as 0.00
        "price": price.copy_abs() if price.is_zero() else price,
        "at": cut(v["at"]),
        "at6": v["at6"],
        "day": v["day"],
        "clock": dt.timedelta(hours=clock.hour, minutes=clock.minute, seconds=clock.second),
        "color": v["color"].name,
        "token": v["token"].hex,
        "note": v["note"],
        "unmapped_column": "ignored",
    }


def fast_keys(obj: Any, declared: Declared, dialect: Any = MARIADB) -> list[str]:
    level = Collected()
    collect_change(level, declared, None, instance_row(obj, declared), dialect=dialect)
    return list(level.keys)


@pytest.fixture(scope="module")
def item() -> tuple[type[Any], Declared]:
    model = build_item("sa_prop_items", Registry())
    declared = declared_for(model)
    assert declared is not None
    return model, declared


@settings(max_examples=300, deadline=None)
@given(id=st.integers(min_value=1, max_value=2**31 - 1), values=item_values())
def test_instance_and_binlog_row_render_the_same_keys(
    item: tuple[type[Any], Declared], id: int, values: dict[str, Any]
) -> None:
    model, declared = item
    spec = declared.spec
    from_instance = fast_keys(model(id=id, **values), declared)
    from_binlog = template_keys(spec, None, spec.row_from_columns(binlog_columns(id, values)))
    assert from_instance == from_binlog
    assert len(from_instance) == 4 + (values["at6"] is not None) + (values["note"] is not None)


def test_a_negative_zero_renders_the_key_of_the_zero_the_database_stores(
    item: tuple[type[Any], Declared],
) -> None:
    model, declared = item
    values = {
        "code": "c",
        "flag": False,
        "price": Decimal("-0.001"),
        "at": dt.datetime(2000, 1, 1),
        "at6": None,
        "day": dt.date(2000, 1, 1),
        "clock": dt.time(0),
        "color": Color.RED,
        "token": uuid.UUID(int=1),
        "note": None,
    }
    assert "item:money:0:0" in fast_keys(model(id=1, **values), declared)
    spec = declared.spec
    assert fast_keys(model(id=1, **values), declared) == template_keys(
        spec, None, spec.row_from_columns(binlog_columns(1, values))
    )


def test_column_named_differently_from_its_attribute(item: tuple[type[Any], Declared]) -> None:
    _, declared = item
    assert declared.spec.columns["code"] == "item_code"
    assert "code" in declared.spec.key_templates[1].fields


# ------------------------------------------------------------------------------------------
# Through MariaDB's binlog
# ------------------------------------------------------------------------------------------


def _binlog_changes(
    params: dict[str, Any], registry: Registry, table: str, start: tuple[str, int], count: int
) -> list[Any]:
    from cachesync.binlog.checkpoint import ResumePoint
    from cachesync.binlog.source import BinlogSource

    changes: list[Any] = []
    source = BinlogSource(
        params, registry, server_id=random.randint(60_001, 90_000), start=ResumePoint(*start)
    )
    deadline = time.monotonic() + 60
    try:
        while len(changes) < count and time.monotonic() < deadline:
            changes.extend(c for c in source.poll(500, 1.0) if c.table == table)
    finally:
        source.close()
    return changes


@pytest.fixture
def binlog_item(mariadb: Engine) -> Iterator[tuple[type[Any], Registry]]:
    registry = Registry()
    model = build_item(f"sa_{RUN}_binlog_items", registry)
    model.metadata.create_all(mariadb)
    yield model, registry
    model.metadata.drop_all(mariadb)


@pytest.mark.services
def test_orm_writes_and_binlog_rows_render_identical_keys(
    mariadb: Engine, mysql_url: str, binlog_item: tuple[type[Any], Registry]
) -> None:
    from cachesync.binlog import server

    model, registry = binlog_item
    params = mysql_params(mysql_url)
    conn = server.connect(params)
    try:
        start = server.master_status(conn)
    finally:
        conn.close()
    fast = RecordingFastPath()
    maker = sessionmaker(mariadb)
    install(maker, fast_path=fast)
    ops: list[Op] = []
    ids = iter(range(1, 10**6))

    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(first=item_values(), second=item_values())
    def write(first: dict[str, Any], second: dict[str, Any]) -> None:
        id = next(ids)
        with maker.begin() as s:
            s.add(model(id=id, **first))
        with maker.begin() as s:  # a fresh session: the update sees values as stored
            obj = s.get(model, id)
            for name, value in second.items():
                setattr(obj, name, value)
        with maker.begin() as s:
            s.delete(s.get(model, id))
        ops.extend([Op.INSERT, Op.UPDATE, Op.DELETE])

    try:
        write()
    finally:
        uninstall(maker)
    assert len(fast.batches) == len(ops) >= 3 * 10
    spec = registry.tables()[0]
    changes = _binlog_changes(params, registry, spec.table, start, len(ops))
    assert [c.op for c in changes] == ops
    for delivered, change in zip(fast.batches, changes, strict=True):
        planned = [k for a in plan(change, spec) if isinstance(a, DeleteKeys) for k in a.keys]
        assert set(delivered) == set(planned), (change, delivered, planned)
        assert len(delivered) == len(planned)


def test_stored_forms_in_keys(item: tuple[type[Any], Declared]) -> None:
    model, declared = item
    token = uuid.UUID(int=1)
    obj = model(
        id=1,
        code="c",
        flag=True,
        price=Decimal("1.005"),  # DECIMAL(10, 2) stores 1.01
        at=dt.datetime(2024, 1, 1, 0, 0, 0, 999_999),  # DATETIME keeps whole seconds
        at6=dt.datetime(2024, 1, 1, 0, 0, 0, 5),
        day=dt.date(2024, 1, 1),
        clock=dt.time(1, 2, 3, 400_000),
        color=Color.GREEN,  # stored as its name
        token=token,  # CHAR(32): hex digits
        note=None,  # NULL: no key
    )
    assert fast_keys(obj, declared) == [
        "item:1",
        "item:code:c",
        "item:money:1:1.01",
        "item:when:2024-01-01T00:00:00:2024-01-01T00:00:00.000005:2024-01-01:01:02:03",
        f"item:kind:GREEN:{token.hex}",
    ]
    mysql_keys = fast_keys(obj, declared, mysql.dialect())  # MySQL rounds fractions
    assert "item:when:2024-01-01T00:00:01:2024-01-01T00:00:00.000005:2024-01-01:01:02:03" in (
        mysql_keys
    )
