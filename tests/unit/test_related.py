"""Resolution of ``related=`` / ``depends_on=`` (pure: SQLAlchemy metadata, no services)."""

from __future__ import annotations

import pytest

from cachesync import DeclarationError, Projection, Registry, Sync
from cachesync.contrib.sqlalchemy import register, unregister
from cachesync.related import joined_sql, relations_of
from tests.integration.binlog.shop import Category, Product, declare


def test_relationships_resolve_hops_fields_and_triggers() -> None:
    spec = declare("shop", Registry()).for_model("Product")
    relations = relations_of(spec)
    assert relations is not None
    assert relations.fields == {
        "category_name": (("category",), "title"),  # the attribute's column
        "department_name": (("category", "department"), "name"),
    }
    # depends_on: any column of a category counts; a department only through what is read.
    assert relations.triggers(None, "categories", "shop") == [(("category",), None)]
    assert relations.triggers(None, "departments", "shop") == [
        (("category", "department"), frozenset({"id", "name"}))
    ]
    assert relations.triggers(None, "users", "shop") == []
    sql, names = joined_sql(spec, "shop")
    assert "LEFT OUTER JOIN shop.categories AS t1 ON t0.category_id = t1.id" in sql
    assert names[-2:] == ["@category_name", "@department_name"]


@pytest.mark.parametrize(
    ("sync", "fragment"),
    [
        (
            Sync(search=Projection(index="p", fields=["name"], related={"name": "category.name"})),
            r"related field 'name' is also an attribute",
        ),
        (
            Sync(search=Projection(index="p", fields=["name"], related={"c": "category"})),
            r"'category' must be 'relation.attribute'",
        ),
        (
            Sync(keys=["p:{id}"], depends_on={"category": ["q:{id}"]}),
            r"depends_on\['category'\] names 'q:\{id\}', which is not in keys",
        ),
        (
            Sync(keys=["p:{idd}"], depends_on={"category": ["p:{idd}"]}),
            r"uses unknown attribute 'idd'",
        ),
    ],
)
def test_bad_declarations_fail_at_definition_naming_the_model(sync: Sync, fragment: str) -> None:
    with pytest.raises(DeclarationError, match=r"shop\.Product: .*" + fragment):
        register(Product, sync, registry=Registry())


def test_unknown_or_to_many_relations_fail_when_resolved_naming_the_model() -> None:
    registry = Registry()
    register(
        Product,
        Sync(search=Projection(index="p", fields=["name"], related={"c": "category.nme"})),
        registry=registry,
    )
    with pytest.raises(DeclarationError, match=r"Product: related field 'c': .*Category has no"):
        relations_of(registry.for_model("Product"))
    register(
        Category,
        Sync(search=Projection(index="c", fields=["name"], related={"d": "departmnt.name"})),
        registry=registry,
    )
    try:
        with pytest.raises(DeclarationError, match=r"Category: relation 'departmnt'.*known: dep"):
            relations_of(registry.for_model("Category"))
    finally:
        unregister(Category)


def test_joined_select_widens_own_and_related_floats_by_the_types_given() -> None:
    from cachesync.values import ColumnType, column_type

    spec = declare("shop", Registry()).for_model("Product")
    # As joined_types() keys them: own columns by name, related fields by label.
    types: dict[str, ColumnType] = {
        "id": column_type("int(11)"),
        "name": column_type("float"),
        "@category_name": column_type("float"),
        "@department_name": column_type("varchar(64)"),
    }
    sql, names = joined_sql(spec, "shop", types)
    assert "t0.name + 0e0 AS name" in sql
    assert "t1.title + 0e0 AS `@category_name`" in sql
    assert "t2.name AS `@department_name`" in sql
    assert names == ["id", "name", "category_id", "@category_name", "@department_name"]
    untyped, same = joined_sql(spec, "shop")
    assert "0e0" not in untyped and same == names
