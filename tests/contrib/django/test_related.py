"""``related=`` and ``depends_on=`` on Django models: foreign keys followed hop by hop."""

from __future__ import annotations

import pytest
from django.db import models
from django.test.utils import isolate_apps

from cachesync import DeclarationError, Projection, Sync
from cachesync.contrib.django.declarations import build_table
from cachesync.related import joined_sql, relations_of


@isolate_apps("tests.contrib.django.testapp")
def test_two_hops_of_foreign_keys_resolve_to_tables_and_columns() -> None:
    class Department(models.Model):
        name = models.CharField(max_length=64)

        class Meta:
            app_label = "testapp"

    class Category(models.Model):
        name = models.CharField(max_length=64, db_column="title")
        department = models.ForeignKey(Department, null=True, on_delete=models.SET_NULL)

        class Meta:
            app_label = "testapp"

    class Product(models.Model):
        name = models.CharField(max_length=64)
        category = models.ForeignKey(Category, null=True, on_delete=models.SET_NULL)

        class Meta:
            app_label = "testapp"

    sync = Sync(
        keys=["product:{pk}:card"],
        depends_on={"category": ["product:{pk}:card"]},
        search=Projection(
            index="products",
            fields=["name"],
            related={"category_name": "category.name", "department": "category.department.name"},
        ),
    )
    spec = build_table(Product, sync).spec
    relations = relations_of(spec)
    assert relations is not None
    category = relations.hops[("category",)]
    assert (category.table, category.local, category.remote) == (
        "testapp_category",
        ("category_id",),
        ("id",),
    )
    assert relations.fields["category_name"] == (("category",), "title")  # db_column
    assert relations.fields["department"] == (("category", "department"), "name")
    sql, names = joined_sql(spec, "shop")
    assert "LEFT OUTER JOIN shop.testapp_category AS t1 ON t0.category_id = t1.id" in sql
    assert "LEFT OUTER JOIN shop.testapp_department AS t2 ON t1.department_id = t2.id" in sql
    assert names[-2:] == ["@category_name", "@department"]
    row = spec.row_from_columns({"id": 1, "name": "n", "category_id": 2, "@category_name": "c"})
    assert row["category_name"] == "c"

    with pytest.raises(DeclarationError, match=r"Product: relation 'categry'.*no foreign key"):
        build_table(
            Product,
            Sync(search=Projection(index="p", fields=["name"], related={"c": "categry.name"})),
        )
    with pytest.raises(DeclarationError, match=r"Product: related field 'c': .*Category has no"):
        build_table(
            Product,
            Sync(search=Projection(index="p", fields=["name"], related={"c": "category.nme"})),
        )
    with pytest.raises(DeclarationError, match=r"Department: relation 'category_set'.*"):
        build_table(
            Department,
            Sync(search=Projection(index="d", fields=["name"], related={"c": "category_set.name"})),
        )
    with pytest.raises(DeclarationError, match=r"depends_on\['category'\] names 'x:\{pk\}'"):
        build_table(Product, Sync(keys=["p:{pk}"], depends_on={"category": ["x:{pk}"]}))
