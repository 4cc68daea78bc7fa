"""Declarations read from ``Model._meta``: field names, ``db_column``, foreign keys, ``pk``."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection, models
from django.db.models import signals
from django.test.utils import isolate_apps

from cachesync import DeclarationError, Projection, Sync
from cachesync.changes import Op, RowChange
from cachesync.contrib.django import CacheSyncModel, register, unregister
from cachesync.contrib.django.declarations import build_table, declared_sync, table_for
from cachesync.planning import plan
from tests.contrib.django.testapp.models import Article, PublishedArticle, Restaurant, Tag


def test_column_map_uses_field_names_db_column_fk_and_pk() -> None:
    table = table_for(Article)
    assert table is not None
    spec = table.spec
    assert (spec.model, spec.table, spec.schema) == ("csdj.Article", "csdj_article", None)
    assert spec.columns["slug"] == "url_slug"  # db_column
    assert spec.columns["author_id"] == spec.columns["author"] == "author_id"  # FK both ways
    assert spec.columns["pk"] == "id"
    assert spec.primary_key == ("id",)
    assert spec.attributes_by_column["author_id"] == "author_id"  # the attname is canonical


def test_binlog_row_renders_pk_and_fk_aliases() -> None:
    spec = table_for(Article).spec  # type: ignore[union-attr]
    image = {"id": 7, "title": "T", "url_slug": "s", "author_id": 3, "status": 1}
    change = RowChange(Op.INSERT, "cachesync_django_test", "csdj_article", None, image)
    (keys, *_docs) = plan(change, spec)
    assert set(keys.keys) == {  # type: ignore[union-attr]
        "article:7",
        "article:by-slug:s",
        "author:3:article:7",
        "author:3:articles",
    }


def test_proxy_and_mti_child_resolve_to_the_tables_they_write() -> None:
    assert table_for(PublishedArticle) is table_for(Article)
    assert table_for(Restaurant) is None  # Place's declaration belongs to Place's table
    assert declared_sync(Restaurant) is None
    assert signals.post_save.has_listeners(Restaurant)  # ...but a child's save writes Place


def test_register_after_start_up_raises_naming_model_and_field() -> None:
    with pytest.raises(DeclarationError, match=r"auth\.User: key 'u:\{nick\}' uses unknown"):
        register(User, keys=["u:{nick}"])
    assert table_for(User) is not None  # the earlier, valid registration stays


@pytest.mark.parametrize(
    ("model", "kwargs", "fragment"),
    [
        ("not a model", {"keys": ["x:{pk}"]}, "expects a Django model class"),
        (PublishedArticle, {"keys": ["x:{pk}"]}, "proxy of csdj.Article"),
        (Tag, {"keys": "tag:{pk}"}, "must be a list of templates"),
        (Tag, {"keys": ["tag:{name.upper}"]}, "plain attribute name"),
        (Tag, {"search": Projection(index="tags", fields=["nope"])}, "'nope' is not an attribute"),
        (Tag, {}, "declares nothing"),
        (Tag, {"sync": Sync(keys=["t:{pk}"]), "keys": ["t:{id}"]}, "not both"),
    ],
)
def test_invalid_register_calls(model: Any, kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(DeclarationError, match=fragment):
        register(model, **kwargs)
    assert table_for(Tag) is not None


@isolate_apps("tests.contrib.django.testapp")
def test_register_and_unregister_a_model_at_run_time() -> None:
    class Coupon(models.Model):
        code = models.CharField(max_length=20, db_column="coupon_code")
        owner = models.ForeignKey(User, on_delete=models.CASCADE, db_column="owner_ref")

        class Meta:
            app_label = "csdj"

    spec = register(Coupon, Sync(keys=["coupon:{code}", "owner:{owner}:coupons"]))
    try:
        table = table_for(Coupon)
        assert spec is not None and table is not None and table.spec is spec
        assert table is not None
        assert table.spec.columns["owner"] == table.spec.columns["owner_id"] == "owner_ref"
        assert table.spec.columns["code"] == "coupon_code"
        assert signals.post_save.has_listeners(Coupon)
        row = table.instance_row(Coupon(code="X1", owner_id=5), connection)
        assert row["owner"] == row["owner_id"] == 5
    finally:
        unregister(Coupon)
    assert table_for(Coupon) is None
    assert not signals.post_save.has_listeners(Coupon)


@isolate_apps("tests.contrib.django.testapp")
def test_abstract_base_declaration_is_inherited_by_concrete_models() -> None:
    class Stamped(CacheSyncModel, models.Model):
        name = models.CharField(max_length=20)
        __cachesync__ = Sync(keys=["named:{name}"])

        class Meta:
            abstract = True
            app_label = "csdj"

    class Thing(Stamped):
        class Meta:
            app_label = "csdj"

    found = declared_sync(Thing)
    assert found is not None and found[1] is Stamped
    table = build_table(Thing, found[0])
    assert table.spec.table == "csdj_thing"
    with pytest.raises(DeclarationError, match="abstract model has no table"):
        build_table(Stamped, found[0])


def test_cachesync_keys_of_an_instance() -> None:
    article = Article(pk=4, title="T", slug="s", author_id=2)
    assert article.cachesync_keys() == ["article:4", "article:by-slug:s", "author:2:article:4"]


def test_rows_for_invalidates_have_every_column_and_alias() -> None:
    table = table_for(Article)
    assert table is not None and table.needs_full_rows
    row = table.instance_row(Article(pk=4, title="T", slug="s", author_id=2), connection)
    assert row == {
        "id": 4,
        "pk": 4,
        "title": "T",
        "slug": "s",
        "author_id": 2,
        "author": 2,
        "status": 0,
    }
    only_keys = table_for(Tag)
    assert only_keys is not None and set(only_keys.row_attnames) == {"id", "name"}
