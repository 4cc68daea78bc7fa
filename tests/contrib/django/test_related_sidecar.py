"""Related data declared on Django models, on the real sidecar, and its keys as SQLAlchemy's.

The shop of :mod:`tests.integration.binlog.shop` (products -> categories ->
departments, ``category.name`` in column ``title``) declared with Django
foreign keys instead of SQLAlchemy relationships:

* the sidecar, fed by raw SQL from another service, renames a category, moves
  a product and renames a department two hops away: every product document
  equals a fresh joined ``SELECT`` and every dependent key is gone;
* for generated rows, the fan-out renders the SAME ``depends_on`` keys from the
  Django and the SQLAlchemy declaration, and with a cache alias whose
  ``make_key`` adds a prefix and version (Django's default key function), also
  the ``make_key`` form of every key the read API renders, so a key the read
  path stored is a key the fan-out deletes (guarantee 10).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
from django.core.cache.backends.base import default_key_func
from django.db import models
from django.test.utils import isolate_apps
from hypothesis import given, settings
from hypothesis import strategies as st

from cachesync import Projection, Sync
from cachesync.binlog.fanjobs import FanoutJob
from cachesync.binlog.fanout import plan_chunk
from cachesync.changes import BinlogPosition
from cachesync.contrib.django.conf import key_affixes
from cachesync.contrib.django.reads import ModelCache
from cachesync.contrib.django.tables import DjangoTable, build_table
from cachesync.registry import Registry
from cachesync.related import relations_of
from tests.integration.binlog.harness import BinlogEnv, binlog_env, running
from tests.integration.binlog.models import key_prefix
from tests.integration.binlog.shop import DDL, card_key, index_name
from tests.integration.binlog.shop import declare as declare_sqlalchemy
from tests.integration.binlog.test_fanout import assert_documents_right, documents, fill

__all__ = ["binlog_env"]  # the fixture, imported for this module

pytestmark = pytest.mark.services


def _models() -> tuple[Any, Any, Any]:
    """Django models of the shop's tables, in an isolated app registry."""
    with isolate_apps("tests.contrib.django.testapp"):

        class Department(models.Model):
            name = models.CharField(max_length=64)

            class Meta:
                app_label = "testapp"
                db_table = "departments"
                managed = False

        class Category(models.Model):
            name = models.CharField(max_length=64, db_column="title")
            department = models.ForeignKey(Department, null=True, on_delete=models.SET_NULL)

            class Meta:
                app_label = "testapp"
                db_table = "categories"
                managed = False

        class Product(models.Model):
            name = models.CharField(max_length=64)
            category = models.ForeignKey(Category, null=True, on_delete=models.SET_NULL)

            class Meta:
                app_label = "testapp"
                db_table = "products"
                managed = False

    return Department, Category, Product


_DEPARTMENT, _CATEGORY, PRODUCT = _models()


def declaration(prefix: str, index: str) -> Sync:
    """The shop's declaration in Django's names (``{pk}``, ``{category}``: the foreign key)."""
    return Sync(
        keys=[
            prefix + "product:{id}:card",
            prefix + "category:{category}:product:{name}",
        ],
        depends_on={
            "category": [
                prefix + "product:{id}:card",
                prefix + "category:{category}:product:{name}",
            ]
        },
        search=Projection(
            index=index,
            fields=["name", "category_id"],
            related={
                "category_name": "category.name",
                "department_name": "category.department.name",
            },
        ),
    )


def django_table(schema: str, affixes: Any = None) -> DjangoTable:
    return build_table(PRODUCT, declaration(key_prefix(schema), index_name(schema)), affixes)


# -- the sidecar --------------------------------------------------------------------------------


@pytest.fixture
def shop(binlog_env: BinlogEnv) -> Iterator[BinlogEnv]:
    for statement in DDL:
        binlog_env.sql(statement)
    yield binlog_env
    binlog_env.es.indices.delete(index=index_name(binlog_env.schema), ignore_unavailable=True)


def test_django_rename_move_and_two_hop_rename_reach_documents_and_keys(shop: BinlogEnv) -> None:
    env = shop
    registry = env.registry()
    registry.add(django_table(env.schema).spec)
    cards = [card_key(env.schema, i) for i in range(1, 31)]
    with running(env.sidecar(registry=registry)):
        fill(env)
        env.sync_point()
        assert_documents_right(env)
        env.set_keys(cards)
        env.sql("UPDATE categories SET title = 'Hand tools' WHERE id = 1")  # another service
        env.sync_point()
        assert_documents_right(env)
        in_one = {i for i in range(1, 31) if 1 + i % 3 == 1}
        assert set(env.existing(cards)) == {card_key(env.schema, i) for i in range(1, 31)} - {
            card_key(env.schema, i) for i in in_one
        }
        assert documents(env)["3"]["category_name"] == "Hand tools"
        # A product moves to another category: its document follows, its card goes.
        env.set_keys(cards)
        env.sql("UPDATE products SET category_id = 2 WHERE id = 3")
        env.sync_point()
        assert documents(env)["3"]["category_name"] == "Pots"
        assert documents(env)["3"]["department_name"] == "Kitchen"
        assert card_key(env.schema, 3) not in env.existing(cards)
        assert_documents_right(env)
        # Two hops: a department rename reaches the products of its categories.
        env.sql("UPDATE departments SET name = 'Outdoor' WHERE id = 1")
        env.sync_point()
        assert_documents_right(env)
        garden = [d for d in documents(env).values() if d["category_id"] in (1, 3)]
        assert garden and all(d["department_name"] == "Outdoor" for d in garden)


# -- the keys, both ORMs -----------------------------------------------------------------------

#: Django's default key function for an alias with KEY_PREFIX "shop" and VERSION 3.
MAKE_KEY = partial(default_key_func, key_prefix="sh{op", version=3)

NAMES = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)


def _fanned_keys(spec: Any, image: dict[str, Any]) -> set[str]:
    """The keys the fan-out deletes for *image* (a joined row) when its category changes."""
    relations = relations_of(spec)
    assert relations is not None
    job = FanoutJob(spec, ("category",), (image["category_id"],), BinlogPosition("b", 4))
    chunk = plan_chunk(job, relations, [image], final=True)
    assert not chunk.poison
    return set(chunk.keys)


def test_both_orms_fan_out_the_same_dependent_keys_and_make_key_twins(django_db: str) -> None:
    schema = "shopkeys"
    affixes = key_affixes(MAKE_KEY)
    assert affixes is not None and not affixes.identity
    plain = django_table(schema)
    wrapped = django_table(schema, affixes)
    sqlalchemy = declare_sqlalchemy(schema, Registry()).for_model("Product")
    # The SQLAlchemy shop has no {category} key: compare the templates both declare.
    shared = {t.text for t in sqlalchemy.depends_on[("category",)]}
    reads = ModelCache(wrapped)

    @settings(max_examples=200, deadline=None)
    @given(
        pk=st.integers(1, 2**31 - 1),
        name=NAMES,
        category=st.none() | st.integers(1, 2**31 - 1),
    )
    def check(pk: int, name: str, category: int | None) -> None:
        image = {
            "id": pk,
            "name": name,
            "category_id": category,
            "@category_name": "c",
            "@department_name": None,
        }
        django = _fanned_keys(plain.spec, image)
        assert django, "no dependent key rendered"
        card = key_prefix(schema) + f"product:{pk}:card"
        assert card in django
        by_sqlalchemy = _fanned_keys(sqlalchemy, image)
        assert by_sqlalchemy == {card}
        assert {k for k in django if k.endswith(":card")} == by_sqlalchemy
        # The read API renders the declared keys; the alias stores each under make_key(key).
        read = {reads.key(id=pk)}
        if category is not None:
            read.add(reads.key(category=category, name=name))
        assert read == django, "the read API and the fan-out render different keys"
        fanned = _fanned_keys(wrapped.spec, image)
        assert fanned == django | {MAKE_KEY(k) for k in django}, sorted(fanned ^ django)
        assert {MAKE_KEY(str(k)) for k in read} <= fanned

    assert shared == {key_prefix(schema) + "product:{id}:card"}
    check()
