"""Every key the read API can write is a key an invalidation deletes (generated rows, no services).

For each generated row, every key the read API renders (``Model.cache.key(pk)``,
``key(**lookup)`` for each declared template, a ``@cached`` template) must be
among the keys the invalidation of that row names: the fast path's keys of its
insert, of its delete, and of an update away from it. The fast path's keys equal
the binlog path's (``test_keys_property.py``), so the read API's keys are the
sidecar's too. Values arrive as an application passes them (a ``Decimal`` with
too many places, a ``UUID`` object, a ``bool``), and are brought to the stored
form by the same code on both sides, for MySQL and for MariaDB (native UUID).
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Boolean, Date, Integer, MetaData, Numeric, String, Uuid
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from cachesync import Sync
from cachesync.contrib.sqlalchemy import CacheSyncMixin, cache_for
from cachesync.contrib.sqlalchemy.declare import declared_for
from cachesync.contrib.sqlalchemy.images import collect_change, instance_row
from cachesync.reads import ModelReads
from cachesync.registry import Registry
from cachesync.transactions import Collected


class Base(DeclarativeBase):
    metadata = MetaData()


class Item(CacheSyncMixin, Base):
    __tablename__ = "rd_prop_items"
    __cachesync_registry__ = Registry()
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sku: Mapped[str] = mapped_column("sku_code", String(40))
    code: Mapped[uuid.UUID] = mapped_column(Uuid)
    amount: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    flag: Mapped[bool] = mapped_column(Boolean)
    day: Mapped[dt.date] = mapped_column(Date)
    __cachesync__ = Sync(
        keys=[
            "item:{id}",
            "item:by-sku:{sku}",
            "item:by-code:{code}",
            "item:amount:{amount}:flag:{flag}",
            "item:day:{day}:{id}",
            "item:{id}:price",
        ]
    )


def _mariadb() -> Dialect:
    d = mysql.dialect()
    d.is_mariadb = True
    d.server_version_info = (10, 11, 19)
    d.supports_native_uuid = True
    return d


DIALECTS = {"mysql": mysql.dialect(), "mariadb": _mariadb()}

rows = st.fixed_dictionaries(
    {
        "id": st.integers(-(2**31), 2**31 - 1),
        "sku": st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=20),
        "code": st.uuids(),
        "amount": st.decimals(
            min_value=-99_999_999, max_value=99_999_999, places=4, allow_nan=False
        ),
        "flag": st.booleans(),
        "day": st.dates(),
    }
)


def _invalidated(dialect: Dialect, before: dict[str, Any] | None, after: dict[str, Any] | None) -> set[str]:
    declared = declared_for(Item)
    assert declared is not None
    level = Collected()
    images = [None if r is None else instance_row(Item(**r), declared) for r in (before, after)]
    collect_change(level, declared, images[0], images[1], dialect=dialect)
    return set(level.all_keys())


def _read_keys(dialect: Dialect, row: dict[str, Any]) -> set[str]:
    cache = cache_for(Item)
    cache._dialect = dialect  # what a session bound to this dialect teaches it
    keys = {cache.key(row["id"])}
    for template in cache.reads.templates:
        key = cache.key(**{f: row[f] for f in template.fields})
        assert key is not None
        keys.add(key)
    decorated = ModelReads(cache.declared.spec, templates=[cache.reads.templates[-1]])
    keys.add(str(decorated.key({"id": row["id"]})))  # what @cached("item:{id}:price") renders
    return keys


@settings(max_examples=200, deadline=None)
@given(row=rows, other=rows, dialect=st.sampled_from(sorted(DIALECTS)))
def test_every_key_the_read_api_writes_is_deleted_by_each_change_of_its_row(
    row: dict[str, Any], other: dict[str, Any], dialect: str
) -> None:
    d = DIALECTS[dialect]
    read = _read_keys(d, row)
    assert len(read) == len(Item.__cachesync__.keys)
    for name, deleted in (
        ("insert", _invalidated(d, None, row)),
        ("delete", _invalidated(d, row, None)),
        ("update away", _invalidated(d, row, other)),
        ("update to", _invalidated(d, other, row)),
    ):
        assert read <= deleted, f"{name}: never invalidated: {sorted(read - deleted)}"
