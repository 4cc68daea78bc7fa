"""The read API on SQLAlchemy models, on the private MariaDB and Redis.

``Product.cache.get(pk, session=...)`` / ``get_by(...)`` / ``@cached``: keys from the
declared templates, values that round-trip (Decimal, datetime, date, time, UUID,
bytes, the instance itself), TTL per declaration, invalidation by the fast path,
one load for 50 concurrent misses, and reads that still answer with Redis
stopped or frozen.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import (
    Date,
    DateTime,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Time,
    Uuid,
    event,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from cachesync import Sync
from cachesync.apply import Applier
from cachesync.config import Settings
from cachesync.connections import redis_client
from cachesync.contrib.sqlalchemy import (
    CacheSyncMixin,
    Reads,
    cache_for,
    cached,
    install,
    uninstall,
)
from cachesync.errors import DeclarationError
from cachesync.policies import ImmediateRetryPolicy
from cachesync.reads import ReadStore, configure_reads
from cachesync.registry import Registry
from cachesync.sinks.redis import RedisSink
from tests.support import services

from .conftest import RUN, RecordingFastPath

pytestmark = pytest.mark.services

_n = iter(range(1, 10_000))


class Catalog:
    """One test's Product model (own table, own key prefix, own registry)."""

    def __init__(self, engine: Engine) -> None:
        n = next(_n)
        self.prefix = kp = f"rd:{RUN}:{n}:"
        self.registry = reg = Registry()

        class Base(DeclarativeBase):
            metadata = MetaData()

        class Product(CacheSyncMixin, Base):
            __tablename__ = f"rd_{RUN}_{n}_product"
            __cachesync_registry__ = reg
            __cachesync_reads__ = Reads(ttl=30)
            id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
            sku: Mapped[str] = mapped_column("sku_code", String(32), unique=True)
            code: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
            price: Mapped[Decimal] = mapped_column(Numeric(10, 2))
            made: Mapped[dt.datetime] = mapped_column(DateTime)
            day: Mapped[dt.date] = mapped_column(Date)
            at: Mapped[dt.time] = mapped_column(Time)
            blob: Mapped[bytes] = mapped_column(LargeBinary)
            __cachesync__ = Sync(
                keys=[
                    f"{kp}product:{{id}}",
                    f"{kp}product:by-sku:{{sku}}",
                    f"{kp}product:by-code:{{code}}",
                    f"{kp}product:{{id}}:price",
                ]
            )

        self.Base, self.Product = Base, Product
        self.engine = engine
        Base.metadata.create_all(engine)
        self.selects = 0
        self.slow = 0.0

        @event.listens_for(engine, "before_cursor_execute")
        def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if statement.lstrip().upper().startswith("SELECT") and Product.__tablename__ in statement:
                self.selects += 1
                if self.slow:
                    time.sleep(self.slow)

        self._listener = count

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._listener)
        self.Base.metadata.drop_all(self.engine)

    def add(self, id: int, sku: str, price: str = "9.99") -> Any:
        product = self.Product(
            id=id,
            sku=sku,
            code=uuid.UUID(int=id),
            price=Decimal(price),
            made=dt.datetime(2024, 5, 6, 7, 8, 9),
            day=dt.date(2024, 5, 6),
            at=dt.time(7, 8, 9),
            blob=b"\x00\xffbytes",
        )
        with Session(self.engine) as s:
            s.add(product)
            s.commit()
        return product


@pytest.fixture
def store(redis_conn: redis.Redis) -> Iterator[ReadStore]:
    configured = configure_reads(ReadStore(client=redis_conn))
    yield configured
    configure_reads(None)


@pytest.fixture
def catalog(mariadb: Engine, redis_conn: redis.Redis) -> Iterator[Catalog]:
    c = Catalog(mariadb)
    yield c
    c.close()
    keys = list(redis_conn.scan_iter(f"{c.prefix}*", count=1000))
    if keys:
        redis_conn.unlink(*keys)


def test_get_loads_once_then_serves_an_equal_detached_instance(
    catalog: Catalog, store: ReadStore, redis_conn: redis.Redis, mariadb: Engine
) -> None:
    catalog.add(1, "sku-1")
    Product = catalog.Product
    Sessions = sessionmaker(mariadb)
    first = Product.cache.get(1, session=Sessions)
    assert catalog.selects == 1
    key = f"{catalog.prefix}product:1"
    assert Product.cache.key(1) == key
    assert redis_conn.exists(key)
    assert 0 < redis_conn.pttl(key) <= 30_000, "the declaration's TTL (Reads(ttl=30))"
    with Session(mariadb) as s:
        second = Product.cache.get(1, session=s)
    assert catalog.selects == 1, "a hit must not query the database"
    assert type(second) is Product
    for name in ("id", "sku", "code", "price", "made", "day", "at", "blob"):
        assert getattr(second, name) == getattr(first, name), name
        assert type(getattr(second, name)) is type(getattr(first, name)), name
    assert second.price == Decimal("9.99") and second.blob == b"\x00\xffbytes"
    with Session(mariadb) as s:  # a detached hit can be attached without a query
        merged = s.merge(second, load=False)
        assert merged.sku == "sku-1"


def test_get_by_a_declared_key_and_a_lookup_no_key_names(
    catalog: Catalog, store: ReadStore, mariadb: Engine
) -> None:
    catalog.add(2, "sku-2")
    Product = catalog.Product
    with Session(mariadb) as s:
        assert Product.cache.get_by(sku="sku-2", session=s).id == 2
        assert Product.cache.get_by(code=uuid.UUID(int=2), session=s).id == 2
    assert Product.cache.key(code=uuid.UUID(int=2)) == (
        # as the session's dialect stores it: text on MariaDB's native UUID, 32 hex digits
        # in a CHAR(32) elsewhere
        f"{catalog.prefix}product:by-code:{uuid.UUID(int=2)}"
    )
    with pytest.raises(DeclarationError, match=r"Product: no declared key is rendered from"):
        Product.cache.get_by(price=Decimal("1"), session=Session(mariadb))
    with pytest.raises(DeclarationError, match=r"'colour' is not an attribute"):
        Product.cache.get_by(colour="red", session=Session(mariadb))


def test_a_commit_invalidates_what_the_read_api_cached(
    catalog: Catalog, store: ReadStore, redis_conn: redis.Redis, mariadb: Engine
) -> None:
    catalog.add(3, "sku-3")
    Product = catalog.Product
    applier = Applier(RedisSink(redis_conn), None, policy=ImmediateRetryPolicy.NONE)
    Sessions = sessionmaker(mariadb)
    install(Sessions, fast_path=RecordingFastPath(applier))
    try:
        assert Product.cache.get(3, session=Sessions).price == Decimal("9.99")
        assert Product.cache.get_by(sku="sku-3", session=Sessions).price == Decimal("9.99")
        assert Product.cache.get(404, session=Sessions) is None  # a miss is cached too...
        assert redis_conn.exists(f"{catalog.prefix}product:404")
        with Sessions() as s:
            s.get(Product, 3).price = Decimal("12.50")
            s.add(
                Product(
                    id=404, sku="sku-404", code=uuid.UUID(int=404), price=Decimal("1"),
                    made=dt.datetime(2024, 1, 1), day=dt.date(2024, 1, 1), at=dt.time(1),
                    blob=b"",
                )
            )  # fmt: skip
            s.commit()
        assert Product.cache.get(3, session=Sessions).price == Decimal("12.50")
        assert Product.cache.get_by(sku="sku-3", session=Sessions).price == Decimal("12.50")
        assert Product.cache.get(404, session=Sessions).sku == "sku-404"  # ...until the insert
    finally:
        uninstall(Sessions)


def test_a_session_in_a_transaction_never_fills_from_its_old_snapshot(
    catalog: Catalog, store: ReadStore, redis_conn: redis.Redis, mariadb: Engine
) -> None:
    catalog.add(8, "sku-8")
    Product = catalog.Product
    reader = Session(mariadb)
    try:
        assert reader.get(Product, 8).price == Decimal("9.99")  # REPEATABLE READ snapshot now
        with Session(mariadb) as writer:  # commits; its invalidation ran (nothing cached)
            writer.get(Product, 8).price = Decimal("12.50")
            writer.commit()
        reader.expunge_all()
        assert reader.get(Product, 8).price == Decimal("9.99"), "the reader's snapshot is old"
        reader.expunge_all()
        assert Product.cache.get(8, session=reader).price == Decimal("12.50")
        assert reader.in_transaction()
        cached = store.serializer.loads(redis_conn.get(f"{catalog.prefix}product:8"))
        assert cached.price == Decimal("12.50"), "filled from the reader's old snapshot"
    finally:
        reader.close()


def test_cached_decorator_on_a_declared_template_and_on_an_undeclared_one(
    catalog: Catalog, store: ReadStore, redis_conn: redis.Redis
) -> None:
    calls: list[int] = []
    template = f"{catalog.prefix}product:{{id}}:price"

    @cached(template, registry=catalog.registry)
    def price(id: int) -> Decimal:
        calls.append(id)
        return Decimal("3.10")

    assert price(7) == Decimal("3.10") and price(id=7) == Decimal("3.10")
    assert calls == [7]
    assert redis_conn.exists(f"{catalog.prefix}product:7:price")

    @cached(f"{catalog.prefix}nobody:{{id}}", registry=catalog.registry)
    def orphan(id: int) -> int:
        return id

    with pytest.raises(DeclarationError, match="no model declares this key template"):
        orphan(1)
    with pytest.raises(DeclarationError, match="has no argument 'id'"):
        cached(template)(lambda pk: pk)


def test_fifty_concurrent_misses_cause_exactly_one_load(
    catalog: Catalog, store: ReadStore, mariadb: Engine
) -> None:
    catalog.add(5, "sku-5")
    catalog.selects = 0
    catalog.slow = 0.3  # a slow query: every reader arrives while the first one loads
    # A lease longer than any stall of a loaded machine: waiters never give up and load.
    Product = cache_for(catalog.Product, Reads(ttl=30, lease_ms=20_000))
    Sessions = sessionmaker(mariadb)
    barrier = threading.Barrier(50)
    results: list[Any] = []
    errors: list[BaseException] = []

    def read() -> None:
        try:
            barrier.wait(30)
            results.append(Product.get(5, session=Sessions).sku)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    assert results == ["sku-5"] * 50
    assert catalog.selects == 1, f"{catalog.selects} loads for 50 concurrent misses"


@pytest.fixture
def throwaway(tmp_path: Path) -> Iterator[services.RedisProcess]:
    proc = services.start_redis(services.free_port(), tmp_path / "redis")
    yield proc
    if proc.pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
    proc.stop()


def test_reads_answer_with_redis_stopped_or_frozen(
    catalog: Catalog, throwaway: services.RedisProcess, mariadb: Engine
) -> None:
    timeout = 0.5
    client = redis_client(
        Settings(
            redis_url=throwaway.url, redis_connect_timeout=timeout, redis_socket_timeout=timeout
        )
    )
    configure_reads(ReadStore(client=client))
    try:
        catalog.add(6, "sku-6")
        Product = catalog.Product
        with Session(mariadb) as s:
            assert Product.cache.get(6, session=s).sku == "sku-6"  # cached in the throwaway
            assert throwaway.pid is not None
            os.kill(throwaway.pid, signal.SIGSTOP)  # frozen: connections open, no reply
            started = time.monotonic()
            assert Product.cache.get(6, session=s).sku == "sku-6"
            frozen = time.monotonic() - started
            os.kill(throwaway.pid, signal.SIGCONT)
            throwaway.kill()  # stopped: connection refused
            started = time.monotonic()
            assert Product.cache.get(6, session=s).sku == "sku-6"
            stopped = time.monotonic() - started
        print(f"\nread with Redis frozen: {frozen * 1000:.0f} ms (socket timeout {timeout}s); "
              f"with Redis stopped: {stopped * 1000:.0f} ms")  # fmt: skip
        # One socket timeout, plus slack for a loaded machine; never the lease wait (3 s+).
        assert frozen < timeout + 2.0
        assert stopped < timeout + 2.0
    finally:
        configure_reads(None)
