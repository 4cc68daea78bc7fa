from __future__ import annotations

import pytest

from cachesync import DeclarationError, Projection, Registry, Sync, resolve

from .models import USER_COLUMNS, user_spec


def _resolve(sync: object) -> object:
    return resolve("app.User", sync, table="users", columns=USER_COLUMNS, primary_key=["id"])


@pytest.mark.parametrize(
    ("sync", "message"),
    [
        (Sync(keys=["user:{idd}"]), "app.User: key 'user:{idd}' uses unknown attribute 'idd'"),
        (Sync(keys=["user:{user_name}"]), "unknown attribute 'user_name'"),
        (Sync(keys=["user:{}"]), "app.User: key: .*positional"),
        (Sync(), "app.User: Sync\\(\\) declares nothing"),
        (Sync(keys="user:{id}"), "must be a list of templates, not a string"),
        (
            Sync(search=Projection(index="users", fields=["nope"])),
            "app.User: Projection\\(index='users'\\) field 'nope' is not an attribute",
        ),
        (Sync(search=Projection(index="users")), "needs exactly one of fields"),
        (Sync(search=Projection(index="Users", fields=["id"])), "lowercase"),
        (
            Sync(search=Projection(index="users", fields=["id"], id="u-{nope}")),
            "id 'u-{nope}' uses unknown attribute",
        ),
        ("not a sync", "must be a cachesync.Sync"),
    ],
)
def test_invalid_declarations_name_the_model_and_the_problem(sync: object, message: str) -> None:
    with pytest.raises(DeclarationError, match=message):
        _resolve(sync)


def test_column_map_is_used_for_binlog_images() -> None:
    spec = user_spec()
    row = spec.row_from_columns({"id": 1, "user_name": "ann", "unmapped": 5})
    assert row == {"id": 1, "username": "ann"}
    assert spec.columns_from_row(row) == {"id": 1, "user_name": "ann"}
    assert spec.key_columns == {"id", "user_name", "email"}


def test_default_document_id_is_the_primary_key() -> None:
    spec = resolve(
        "Pair",
        Sync(search=Projection(index="pairs", fields=["a"])),
        table="pairs",
        columns={"a": "a", "b": "b"},
        primary_key=["a", "b"],
    )
    assert spec.projections[0].doc_id({"a": 1, "b": 2}) == "1:2"


def test_registry_lookup_and_conflicts() -> None:
    registry = Registry()
    spec = registry.add(user_spec())
    assert registry.get("anydb", "users") is spec
    assert registry.for_model("User") is spec
    assert registry.for_index("users") == [(spec, spec.projections[0])]
    other = resolve(
        "other.Thing",
        Sync(keys=["t:{id}"]),
        table="users",
        columns={"id": "id"},
        primary_key=["id"],
    )
    with pytest.raises(DeclarationError, match="already declared by tests.User"):
        registry.add(other)
    with pytest.raises(DeclarationError, match="no model named 'Nope'"):
        registry.for_model("Nope")
