"""Fixtures of the SQLAlchemy integration tests: engines, models per test, an installed sessionmaker.

Every test gets its own model classes on their own ``DeclarativeBase``, a private
:class:`Registry`, tables named ``sa_<run>_<n>_*`` and Redis keys under
``sa:<run>:<n>:``, so concurrent test runs sharing the private MariaDB and Redis
never see each other's rows or keys. Real-service fixtures go through the
session fixtures of ``tests/conftest.py``: without services they FAIL.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import (
    Boolean,
    Engine,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)
from sqlalchemy.pool import NullPool

from cachesync import Sync
from cachesync.apply import Applier, FailureHandler
from cachesync.config import Settings
from cachesync.connections import redis_client, sqlalchemy_url
from cachesync.contrib.sqlalchemy import CacheSyncMixin, install, outbox_table, uninstall
from cachesync.fastpath import FastPath
from cachesync.policies import ImmediateRetryPolicy
from cachesync.registry import Registry
from cachesync.sinks.redis import RedisSink
from cachesync.testing import RecordingFailureHandler

RUN = uuid.uuid4().hex[:6]
_counter = itertools.count(1)


# ------------------------------------------------------------------------------------------
# Test doubles
# ------------------------------------------------------------------------------------------


class RecordingFastPath(FastPath):
    """The real fast path (when given an applier), plus a log of every delivered batch."""

    def __init__(
        self, applier: Applier | None = None, failure_handler: FailureHandler | None = None
    ) -> None:
        super().__init__(applier, failure_handler)
        self.batches: list[list[str]] = []

    def deliver(self, keys: Any) -> None:
        batch = list(keys)
        self.batches.append(batch)
        if self._applier is not None:
            super().deliver(batch)

    @property
    def delivered(self) -> set[str]:
        return {k for b in self.batches for k in b}


# ------------------------------------------------------------------------------------------
# Engines and Redis
# ------------------------------------------------------------------------------------------


def _mariadb_engine(url: str, **kw: Any) -> Engine:
    engine = create_engine(sqlalchemy_url(url), pool_pre_ping=True, **kw)

    @event.listens_for(engine, "connect")
    def bounded_waits(dbapi_connection: Any, record: Any) -> None:
        # A forgotten open transaction must fail a test, not hang it for a year.
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET SESSION innodb_lock_wait_timeout = 10, lock_wait_timeout = 20")

    return engine


def sqlite_engine(path: Path) -> Engine:
    """A file SQLite engine with working SAVEPOINTs (pysqlite's own BEGIN handling off)."""
    engine = create_engine(f"sqlite:///{path}", poolclass=NullPool)

    @event.listens_for(engine, "connect")
    def no_pysqlite_transactions(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN")

    return engine


@pytest.fixture(scope="session")
def mariadb(mysql_url: str) -> Iterator[Engine]:
    engine = _mariadb_engine(mysql_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def mariadb_observer(mysql_url: str) -> Iterator[Engine]:
    """A second engine, so "visible from another connection" really is another connection."""
    engine = _mariadb_engine(mysql_url, poolclass=NullPool)
    yield engine
    engine.dispose()


@pytest.fixture(params=["mariadb", "sqlite"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """The database under test: the private MariaDB, and a file SQLite (dialect neutrality)."""
    if request.param == "mariadb":
        yield request.getfixturevalue("mariadb")
    else:
        e = sqlite_engine(tmp_path / "app.db")
        yield e
        e.dispose()


@pytest.fixture
def observer(engine: Engine, request: pytest.FixtureRequest) -> Engine:
    if engine.dialect.name == "sqlite":
        return engine  # NullPool: every connect() is a new sqlite3 connection
    observer: Engine = request.getfixturevalue("mariadb_observer")
    return observer


@pytest.fixture(scope="session")
def redis_conn(redis_url: str) -> redis.Redis:
    return redis_client(Settings(redis_url=redis_url))


# ------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------


@dataclass
class World:
    """One test's models, tables, key prefix and helpers."""

    prefix: str  # Redis key prefix
    Base: type[DeclarativeBase]
    User: Any
    Post: Any
    Plain: Any
    Doc: Any
    outbox: Table
    registry: Registry
    redis: redis.Redis | None = None
    extra_tables: list[Table] = field(default_factory=list)

    def user_keys(self, id: int, username: str) -> list[str]:
        return [f"{self.prefix}user:{id}", f"{self.prefix}user:by-name:{username}"]

    def post_keys(self, id: int, user_id: int) -> list[str]:
        return [f"{self.prefix}post:{id}", f"{self.prefix}user:{user_id}:posts"]

    def list_key(self, nickname: str | None) -> str:
        return f"{self.prefix}users:nick:{nickname}"

    def seed(self, *keys: str) -> None:
        assert self.redis is not None
        self.redis.mset(dict.fromkeys(keys, "cached"))

    def present(self, *keys: str) -> set[str]:
        assert self.redis is not None
        return {k for k in keys if self.redis.exists(k)}

    def outbox_rows(self, engine: Engine) -> list[Any]:
        with engine.connect() as conn:
            return list(conn.execute(select(self.outbox).order_by(self.outbox.c.id)))

    def outbox_count(self, engine: Engine) -> int:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(self.outbox)).scalar_one())


def build_world(prefix: str, table_prefix: str, registry: Registry | None = None) -> World:
    """Fresh model classes: ``User`` (attribute ``username`` on column ``user_name``, an
    ``invalidates()`` list cache), ``Post`` (orphans deleted with their user), ``Doc`` (key
    on a deferred column), ``Plain`` (not declared)."""
    reg = registry or Registry()
    kp = prefix

    class Base(DeclarativeBase):
        metadata = MetaData()

    def nick_lists(before: Any, after: Any) -> list[str]:
        return [f"{kp}users:nick:{row['nickname']}" for row in (before, after) if row is not None]

    class User(CacheSyncMixin, Base):
        __tablename__ = f"{table_prefix}users"
        __cachesync_registry__ = reg
        id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
        username: Mapped[str] = mapped_column("user_name", String(64))
        nickname: Mapped[str | None] = mapped_column(String(64), nullable=True)
        active: Mapped[bool] = mapped_column(Boolean, default=True)
        karma: Mapped[int] = mapped_column(Integer, default=0)
        posts: Mapped[list[Post]] = relationship(
            back_populates="user", cascade="all, delete-orphan"
        )
        __cachesync__ = Sync(
            keys=[f"{kp}user:{{id}}", f"{kp}user:by-name:{{username}}"],
            invalidates=nick_lists,
        )

    class Post(CacheSyncMixin, Base):
        __tablename__ = f"{table_prefix}posts"
        __cachesync_registry__ = reg
        id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
        user_id: Mapped[int] = mapped_column(ForeignKey(User.id))
        title: Mapped[str] = mapped_column(String(64), default="")
        user: Mapped[User] = relationship(back_populates="posts")
        __cachesync__ = Sync(keys=[f"{kp}post:{{id}}", f"{kp}user:{{user_id}}:posts"])

    class Doc(CacheSyncMixin, Base):
        """A key on a DEFERRED column: nothing loads it unless the hooks do."""

        __tablename__ = f"{table_prefix}docs"
        __cachesync_registry__ = reg
        id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
        slug: Mapped[str] = mapped_column(String(64), deferred=True)
        __cachesync__ = Sync(keys=[f"{kp}doc:{{slug}}"])

    class Plain(Base):
        __tablename__ = f"{table_prefix}plain"
        id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
        name: Mapped[str] = mapped_column(String(64))

    outbox = outbox_table(Base.metadata, f"{table_prefix}outbox")
    return World(kp, Base, User, Post, Plain, Doc, outbox, reg)


@pytest.fixture
def world(engine: Engine, redis_conn: redis.Redis) -> Iterator[World]:
    n = next(_counter)
    w = build_world(f"sa:{RUN}:{n}:", f"sa_{RUN}_{n}_")
    w.redis = redis_conn
    w.Base.metadata.create_all(engine)
    yield w
    w.Base.metadata.drop_all(engine)
    keys = list(redis_conn.scan_iter(f"{w.prefix}*", count=1000))
    if keys:
        redis_conn.unlink(*keys)


@pytest.fixture
def handler() -> RecordingFailureHandler:
    return RecordingFailureHandler()


@pytest.fixture
def fast(redis_conn: redis.Redis, handler: RecordingFailureHandler) -> RecordingFastPath:
    """A fast path deleting from the private Redis, failures to :class:`RecordingFailureHandler`."""
    applier = Applier(RedisSink(redis_conn), None, policy=ImmediateRetryPolicy.NONE)
    return RecordingFastPath(applier, handler)


@pytest.fixture
def Sessions(
    engine: Engine, world: World, fast: RecordingFastPath
) -> Iterator[sessionmaker[Session]]:
    """A sessionmaker with the hooks installed (outbox on), removed afterwards."""
    maker = sessionmaker(engine)
    install(maker, outbox=world.outbox, fast_path=fast)
    yield maker
    uninstall(maker)
