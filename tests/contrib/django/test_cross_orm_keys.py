"""Django and SQLAlchemy render the same key bytes for the same stored row (guarantee 9).

Each ORM has its own integration, but the stored-form rules are shared
(:mod:`cachesync.binding`); these cases once differed between them.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from sqlalchemy import Integer, MetaData, Numeric
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from cachesync import Sync
from cachesync.contrib.django.declarations import table_for
from cachesync.contrib.sqlalchemy import CacheSyncMixin
from cachesync.contrib.sqlalchemy.declare import declared_for
from cachesync.contrib.sqlalchemy.images import collect_change, instance_row
from cachesync.planning import template_keys
from cachesync.registry import Registry
from cachesync.transactions import Collected
from tests.contrib.django.testapp.models import Typed

pytestmark = pytest.mark.services  # Django's MariaDB features ask the server its version

TEMPLATE = "typed:{id}:amount:{amount}"


class _Base(DeclarativeBase):
    metadata = MetaData()


class SaTyped(CacheSyncMixin, _Base):
    """The SQLAlchemy mapping of the Django test model's table (the columns the key needs)."""

    __tablename__ = "csdj_typed"
    __cachesync_registry__ = Registry()
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    amount: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    __cachesync__ = Sync(keys=[TEMPLATE])


def django_key(amount: Decimal) -> str:
    table = table_for(Typed)
    assert table is not None
    instance = Typed(
        pk=1, code=uuid.uuid4(), flag=False, amount=amount, day=dt.date(2024, 1, 1), label="x"
    )
    keys = template_keys(table.spec, None, table.instance_row(instance, connection))
    (key,) = [k for k in keys if k.startswith("typed:1:amount:")]
    return key


def sqlalchemy_key(amount: Decimal) -> str:
    declared = declared_for(SaTyped)
    assert declared is not None
    level = Collected()
    row: Any = instance_row(SaTyped(id=1, amount=amount), declared)
    collect_change(level, declared, None, row, dialect=mysql.dialect(is_mariadb=True))
    (key,) = level.keys
    return key


def binlog_key(stored: Decimal) -> str:
    declared = declared_for(SaTyped)
    assert declared is not None
    spec = declared.spec
    (key,) = template_keys(spec, None, spec.row_from_columns({"id": 1, "amount": stored}))
    return key


@pytest.mark.parametrize("amount", ["-0.00", "-0", "-0.004", "0.00", "-1.005", "12.50"])
def test_both_orms_render_the_key_of_the_stored_decimal(django_db: str, amount: str) -> None:
    # What MariaDB keeps in a DECIMAL(10,2) (checked on the private instance: -0.00 -> 0.00).
    with connection.cursor() as cursor:
        cursor.execute("SELECT CAST(%s AS DECIMAL(10,2))", [amount])
        (stored,) = cursor.fetchone()
    assert django_key(Decimal(amount)) == sqlalchemy_key(Decimal(amount)) == binlog_key(stored)


def test_a_negative_zero_is_the_key_of_zero(django_db: str) -> None:
    assert django_key(Decimal("-0.00")) == sqlalchemy_key(Decimal("-0.00")) == "typed:1:amount:0"
