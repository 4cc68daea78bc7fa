"""SQLAlchemy models of the related-data tests: products embed category and department.

Imported with ``--models tests.integration.binlog.shop`` by a subprocess sidecar,
the module declares ``Product`` for the schema named by ``CACHESYNC_TEST_SCHEMA``
into ``default_registry``.
"""

from __future__ import annotations

import os

from sqlalchemy import ForeignKey, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from cachesync import Projection, Registry, Sync, default_registry
from cachesync.contrib.sqlalchemy import register
from tests.integration.binlog import models


class Base(DeclarativeBase):
    pass


class Department(Base):
    __tablename__ = "departments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))


class Category(Base):
    __tablename__ = "categories"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column("title", String(64))  # attribute != column
    department_id: Mapped[int | None] = mapped_column(ForeignKey("departments.id"))
    department: Mapped[Department | None] = relationship()


class Product(Base):
    __tablename__ = "products"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    category_id: Mapped[int | None] = mapped_column(ForeignKey("categories.id"))
    category: Mapped[Category | None] = relationship()


DDL = [
    "CREATE TABLE departments (id INT PRIMARY KEY, name VARCHAR(64) NOT NULL) ENGINE=InnoDB",
    """CREATE TABLE categories (id INT PRIMARY KEY, title VARCHAR(64) NOT NULL,
        department_id INT NULL, KEY (department_id)) ENGINE=InnoDB""",
    """CREATE TABLE products (id INT PRIMARY KEY, name VARCHAR(64) NOT NULL,
        category_id INT NULL,
        CONSTRAINT products_category FOREIGN KEY (category_id) REFERENCES categories (id)
            ON DELETE SET NULL) ENGINE=InnoDB""",
]


def index_name(schema: str) -> str:
    return f"{schema.lower()}-products"


def card_key(schema: str, pid: int) -> str:
    return f"{models.key_prefix(schema)}product:{pid}:card"


def declare(schema: str, registry: Registry, *, search: bool = True) -> Registry:
    """Declare ``Product`` for *schema* into *registry* (keys only unless *search*)."""
    prefix = models.key_prefix(schema)
    projection = Projection(
        index=index_name(schema),
        fields=["name", "category_id"],
        related={
            "category_name": "category.name",
            "department_name": "category.department.name",
        },
    )
    register(
        Product,
        Sync(
            keys=[prefix + "product:{id}", prefix + "product:{id}:card"],
            depends_on={"category": [prefix + "product:{id}:card"]},
            search=projection if search else None,
        ),
        registry=registry,
    )
    return registry


_SCHEMA = os.environ.get("CACHESYNC_TEST_SCHEMA")
if _SCHEMA:  # CACHESYNC_TEST_SHOP_SEARCH=0: the keys-only declaration
    declare(_SCHEMA, default_registry, search=os.environ.get("CACHESYNC_TEST_SHOP_SEARCH") != "0")
