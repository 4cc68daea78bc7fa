"""Django: every key the read API can write is a key an invalidation deletes (generated rows).

For generated ``Typed`` rows (UUID, bool, decimal with a digit too many, date,
aware datetime in several zones, ``db_column``, a foreign key by name and by
attname, ``{pk}``), every key ``Typed.cache.key(**lookup)`` renders, for each
declared template, is among the keys the signal hooks collect for the row's
insert, delete and updates (:func:`cachesync.binding.collect_change` over
``table.instance_row``); those equal the sidecar's (``test_keys_property.py``).
Lookup values are given as an application gives them (an owner ``User``
instance for ``owner``).
"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachesync.binding import collect_change
from cachesync.contrib.django.declarations import table_for
from cachesync.transactions import Collected
from tests.contrib.django.test_keys_property import typed_values
from tests.contrib.django.testapp.models import Typed

pytestmark = pytest.mark.services


def _invalidated(before: Typed | None, after: Typed | None) -> set[str]:
    table = table_for(Typed)
    assert table is not None
    level = Collected()
    rows = [None if i is None else table.instance_row(i, connection) for i in (before, after)]
    collect_change(level, table.spec, table.row_attnames, rows[0], rows[1])
    return set(level.all_keys())


def _lookup(instance: Typed, name: str) -> Any:
    if name == "owner":
        return instance.owner  # a related instance, as a QuerySet filter takes it
    return getattr(instance, name)


@pytest.fixture(scope="module")
def owners(django_db: str) -> list[User]:
    User.objects.filter(username__startswith="rkp-").delete()
    return [User.objects.create(username=f"rkp-{n}") for n in range(2)]


def test_every_read_key_is_invalidated(owners: list[User]) -> None:
    ids = [u.pk for u in owners]

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(row=typed_values(ids), other=typed_values(ids), pk=st.integers(1, 2**31))
    def check(row: dict[str, Any], other: dict[str, Any], pk: int) -> None:
        one, two = Typed(id=pk, **row), Typed(id=pk, **other)
        cache = Typed.cache
        read: set[str] = set()
        for template in cache.reads.templates:
            key = cache.key(**{f: _lookup(one, f) for f in template.fields})
            if key is not None:  # None: a NULL key field, such a key never exists
                read.add(key)
        assert read, "no key rendered"
        for name, deleted in (
            ("insert", _invalidated(None, one)),
            ("delete", _invalidated(one, None)),
            ("update away", _invalidated(one, two)),
            ("update to", _invalidated(two, one)),
        ):
            assert read <= deleted, f"{name}: never invalidated: {sorted(read - deleted)}"

    check()
