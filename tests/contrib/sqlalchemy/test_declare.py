"""Declarations on SQLAlchemy models: read from the mapper at class definition, errors name the model."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Column, ForeignKey, Integer, MetaData, String, Table, inspect
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    declarative_base,
    mapped_column,
    registry,
    relationship,
)

from cachesync import DeclarationError, Registry, Sync, default_registry
from cachesync.contrib.sqlalchemy import CacheSyncMixin, register, spec_for, track, unregister
from cachesync.contrib.sqlalchemy.declare import declared_for


def fresh_base() -> type[DeclarativeBase]:
    class Base(DeclarativeBase):
        metadata = MetaData()

    return Base


def test_mixin_reads_table_columns_and_primary_key_from_the_mapper() -> None:
    Base, reg = fresh_base(), Registry()

    class User(CacheSyncMixin, Base):
        __tablename__ = "users"
        __table_args__ = {"schema": "app"}
        __cachesync_registry__ = reg
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        username: Mapped[str] = mapped_column("user_name", String(64))
        nickname: Mapped[str | None] = mapped_column(String(64))
        __cachesync__ = Sync(keys=["user:{id}", "user:by-name:{username}"])

    assert not inspect(User).configured, "declaring must not configure the mappers"
    spec = reg.get("app", "users")
    assert spec is not None and spec is spec_for(User) and spec is spec_for(User(id=1))
    assert spec.model.endswith("User")
    assert (spec.schema, spec.table, spec.primary_key) == ("app", "users", ("id",))
    assert spec.columns == {"id": "id", "username": "user_name", "nickname": "nickname"}
    assert spec.row_from_columns({"id": 1, "user_name": "a", "nickname": None}) == {
        "id": 1,
        "username": "a",
        "nickname": None,
    }
    assert default_registry.get("app", "users") is None


def test_declaring_never_configures_mappers() -> None:
    Base, reg = fresh_base(), Registry()

    class Order(CacheSyncMixin, Base):
        __tablename__ = "orders"
        __cachesync_registry__ = reg
        id: Mapped[int] = mapped_column(primary_key=True)
        lines: Mapped[list[Any]] = relationship("Line")  # Line is not defined yet
        __cachesync__ = Sync(keys=["order:{id}"])

    assert reg.get(None, "orders") is not None

    class Line(Base):
        __tablename__ = "lines"
        id: Mapped[int] = mapped_column(primary_key=True)
        order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"))

    Base.registry.configure()


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (["user:{idd}"], "uses unknown attribute 'idd'"),
        (["user:{user_name}"], "uses unknown attribute 'user_name'"),  # a column, not an attribute
        (["user:{}"], "positional field"),
        (["user:{id"], "malformed"),
        ([], "declares nothing"),
    ],
)
def test_invalid_declaration_fails_at_class_definition_naming_the_model(
    keys: list[str], message: str
) -> None:
    Base = fresh_base()
    with pytest.raises(DeclarationError, match=message) as info:

        class BadUser(CacheSyncMixin, Base):
            __tablename__ = "bad_users"
            __cachesync_registry__ = Registry()
            id: Mapped[int] = mapped_column(primary_key=True)
            username: Mapped[str] = mapped_column("user_name", String(64))
            __cachesync__ = Sync(keys=keys)

    assert "BadUser" in str(info.value)


def test_mixin_without_a_declaration_says_what_to_add() -> None:
    Base = fresh_base()
    with pytest.raises(DeclarationError, match=r"Forgetful.*__cachesync__ = Sync"):

        class Forgetful(CacheSyncMixin, Base):
            __tablename__ = "forgetful"
            id: Mapped[int] = mapped_column(primary_key=True)


def test_not_a_sync_object() -> None:
    Base = fresh_base()
    with pytest.raises(DeclarationError, match="must be a cachesync.Sync"):

        class Wrong(CacheSyncMixin, Base):
            __tablename__ = "wrong"
            __cachesync_registry__ = Registry()
            id: Mapped[int] = mapped_column(primary_key=True)
            __cachesync__ = {"keys": ["wrong:{id}"]}  # type: ignore[assignment]


def test_abstract_base_is_skipped_and_each_concrete_model_registers_its_table() -> None:
    Base, reg = fresh_base(), Registry()

    class Cached(CacheSyncMixin, Base):
        __abstract__ = True
        __cachesync_registry__ = reg
        id: Mapped[int] = mapped_column(primary_key=True)
        __cachesync__ = Sync(keys=["thing:{id}"])

    class Apple(Cached):
        __tablename__ = "apples"

    class Pear(Cached):
        __tablename__ = "pears"

    assert sorted(s.table for s in reg) == ["apples", "pears"]
    assert spec_for(Cached) is None
    assert spec_for(Apple) is not spec_for(Pear)


def test_inheritance_uses_the_parents_declaration_unless_opted_out() -> None:
    Base, reg = fresh_base(), Registry()

    class Employee(CacheSyncMixin, Base):
        __tablename__ = "employees"
        __cachesync_registry__ = reg
        id: Mapped[int] = mapped_column(primary_key=True)
        kind: Mapped[str] = mapped_column(String(16))
        __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "employee"}
        __cachesync__ = Sync(keys=["employee:{id}"])

    class Engineer(Employee):  # single table
        __mapper_args__ = {"polymorphic_identity": "engineer"}

    class Manager(Employee):  # joined table
        __tablename__ = "managers"
        id: Mapped[int] = mapped_column(ForeignKey("employees.id"), primary_key=True)
        __mapper_args__ = {"polymorphic_identity": "manager"}

    class Contractor(Employee):
        __mapper_args__ = {"polymorphic_identity": "contractor"}
        __cachesync__ = None

    parent = spec_for(Employee)
    assert spec_for(Engineer) is parent and spec_for(Manager) is parent
    assert spec_for(Contractor) is None
    assert [s.table for s in reg] == ["employees"]


def test_joined_subclass_with_its_own_declaration_watches_its_own_table() -> None:
    Base, reg = fresh_base(), Registry()

    class Animal(CacheSyncMixin, Base):
        __tablename__ = "animals"
        __cachesync_registry__ = reg
        id: Mapped[int] = mapped_column(primary_key=True)
        kind: Mapped[str] = mapped_column(String(16))
        __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "animal"}
        __cachesync__ = Sync(keys=["animal:{id}"])

    class Dog(Animal):
        __tablename__ = "dogs"
        dog_id: Mapped[int] = mapped_column("id", ForeignKey("animals.id"), primary_key=True)
        breed: Mapped[str] = mapped_column(String(16))
        __mapper_args__ = {"polymorphic_identity": "dog"}
        __cachesync__ = Sync(keys=["dog:{dog_id}:{breed}"])

    dog = spec_for(Dog)
    assert dog is not None and dog.table == "dogs"
    assert dog.columns == {"dog_id": "id", "breed": "breed"}
    assert dog.primary_key == ("dog_id",)

    with pytest.raises(DeclarationError, match="unknown attribute 'kind'"):

        class Cat(Animal):
            __tablename__ = "cats"
            id: Mapped[int] = mapped_column(ForeignKey("animals.id"), primary_key=True)
            __mapper_args__ = {"polymorphic_identity": "cat"}
            # 'kind' lives in the parent's table: the binlog row of 'cats' has no such column
            __cachesync__ = Sync(keys=["cat:{kind}:{id}"])


def test_legacy_declarative_base_and_registry_mapped() -> None:
    reg = Registry()
    Legacy = declarative_base()

    class Old(CacheSyncMixin, Legacy):  # type: ignore[misc, valid-type]
        __tablename__ = "old_style"
        __cachesync_registry__ = reg
        id = Column(Integer, primary_key=True)
        name = Column("full_name", String(32))
        __cachesync__ = Sync(keys=["old:{name}"])

    assert spec_for(Old) is not None and spec_for(Old).columns["name"] == "full_name"  # type: ignore[union-attr]

    with pytest.raises(DeclarationError, match="OldBad.*unknown attribute 'nope'"):

        class OldBad(CacheSyncMixin, Legacy):  # type: ignore[misc, valid-type]
            __tablename__ = "old_bad"
            __cachesync_registry__ = reg
            id = Column(Integer, primary_key=True)
            __cachesync__ = Sync(keys=["old:{nope}"])

    mapper_registry = registry()

    @mapper_registry.mapped
    class Decorated(CacheSyncMixin):
        __tablename__ = "decorated"
        __cachesync_registry__ = reg
        id = Column(Integer, primary_key=True)
        __cachesync__ = Sync(keys=["decorated:{id}"])

    assert spec_for(Decorated) is not None


def test_track_and_register_for_models_you_do_not_own() -> None:
    Base, reg = fresh_base(), Registry()

    @track(keys=["tag:{label}"], registry=reg)
    class Tag(Base):
        __tablename__ = "tags"
        id: Mapped[int] = mapped_column(primary_key=True)
        label: Mapped[str] = mapped_column("tag_label", String(32))

    assert spec_for(Tag).columns == {"id": "id", "label": "tag_label"}  # type: ignore[union-attr]

    class ThirdParty(Base):
        __tablename__ = "third_party"
        id: Mapped[int] = mapped_column(primary_key=True)

    spec = register(ThirdParty, Sync(keys=["tp:{id}"]), registry=reg)
    assert spec is spec_for(ThirdParty) and reg.get(None, "third_party") is spec
    again = register(ThirdParty, keys=["tp2:{id}"], registry=reg)  # replaces
    assert reg.get(None, "third_party") is again
    unregister(ThirdParty)
    assert spec_for(ThirdParty) is None and reg.get(None, "third_party") is None

    with pytest.raises(DeclarationError, match="either a Sync"):
        register(Tag, Sync(keys=["x"]), keys=["y"], registry=reg)
    with pytest.raises(DeclarationError, match="Unmapped is not a mapped class"):

        class Unmapped:
            id = 1

        register(Unmapped, keys=["u:{id}"], registry=reg)


def test_imperative_table_with_excluded_and_renamed_columns() -> None:
    reg = Registry()
    metadata = MetaData()
    table = Table(
        "imperative",
        metadata,
        Column("pk", Integer, primary_key=True),
        Column("secret", String(8)),
        Column("code", String(8), key="code_key"),
    )
    mapper_registry = registry(metadata=metadata)

    class Imp:
        pass

    mapper_registry.map_imperatively(
        Imp, table, exclude_properties=["secret"], properties={"the_code": table.c.code_key}
    )
    spec = register(Imp, keys=["imp:{pk}:{the_code}"], registry=reg)
    assert spec.columns == {"pk": "pk", "the_code": "code"}
    with pytest.raises(DeclarationError, match="unknown attribute 'secret'"):
        register(Imp, keys=["imp:{secret}"], registry=reg)


def test_table_declared_by_two_models_is_an_error() -> None:
    Base, reg = fresh_base(), Registry()

    class One(CacheSyncMixin, Base):
        __tablename__ = "shared"
        __cachesync_registry__ = reg
        id: Mapped[int] = mapped_column(primary_key=True)
        __cachesync__ = Sync(keys=["one:{id}"])

    class Two(Base):
        __table__ = One.__table__

    with pytest.raises(DeclarationError, match="already declared by"):
        register(Two, keys=["two:{id}"], registry=reg)


def test_key_attributes_get_active_history() -> None:
    Base, reg = fresh_base(), Registry()

    class Account(CacheSyncMixin, Base):
        __tablename__ = "accounts"
        __cachesync_registry__ = reg
        id: Mapped[int] = mapped_column(primary_key=True)
        email: Mapped[str] = mapped_column(String(64))
        bio: Mapped[str] = mapped_column(String(64))
        __cachesync__ = Sync(keys=["account:{email}"])

    Base.registry.configure()
    assert Account.email.impl.active_history
    assert not Account.bio.impl.active_history  # only what the keys read
    declared = declared_for(Account)
    assert declared is not None and declared.needed == ("email",)
