"""The stale-set race, with a live binlog sidecar: plain get/set ends stale, the read API does not.

The race: a reader misses, reads the OLD row, a writer commits, the sidecar
deletes the key (nothing there yet), then the reader stores the old row, which
stays until its TTL. The read API fills through a lease, which the sidecar's
``UNLINK`` removes, so the late fill is refused.

First deterministically (the reader is held between its SELECT and its fill
while the writer commits by raw SQL and the sidecar applies the change), then
as a stress run: reader threads with a slow loader, a writer updating by raw
SQL, the sidecar invalidating; the number of stale entries left is printed for
the read API and for plain get/set side by side.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Integer, MetaData, String, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from cachesync.connections import sqlalchemy_url
from cachesync.contrib.sqlalchemy import Reads, cache_for, register, unregister
from cachesync.reads import ReadStore, configure_reads
from cachesync.registry import Registry
from cachesync.serializers import JsonSerializer
from tests.integration.binlog.harness import BinlogEnv, running

pytestmark = pytest.mark.services


class App:
    """The application side: a SQLAlchemy ``User`` on the test's ``users`` table."""

    def __init__(self, env: BinlogEnv) -> None:
        self.env = env

        class Base(DeclarativeBase):
            metadata = MetaData()

        class User(Base):
            __tablename__ = "users"
            __table_args__ = {"schema": env.schema}
            id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
            username: Mapped[str] = mapped_column("user_name", String(64))
            nickname: Mapped[str] = mapped_column(String(64))
            email: Mapped[str | None] = mapped_column(String(128), nullable=True)
            state: Mapped[int] = mapped_column(Integer)

        # The same templates the sidecar's declaration renders (models.user_spec).
        prefix = f"{env.schema}:"
        register(
            User, keys=[prefix + "user:{id}", prefix + "user:by-name:{username}"],
            registry=Registry(),
        )  # fmt: skip
        self.User = User
        self.engine = create_engine(sqlalchemy_url(env.root_url), pool_size=20)
        self.Sessions = sessionmaker(self.engine)
        self.cache = cache_for(User, Reads(ttl=300, lease_ms=20_000))
        self.hold: Callable[[], None] | None = None
        self._local = threading.local()

        @event.listens_for(self.engine, "after_cursor_execute")
        def after_select(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            # The row has been read from the database; the fill has not happened yet.
            if statement.lstrip().upper().startswith("SELECT") and self.hold is not None:
                self.hold()

    def key(self, user_id: int) -> str:
        return f"{self.env.schema}:user:{user_id}"

    def naive_get(self, user_id: int) -> str:
        """Plain cache-aside: GET, on a miss SELECT and SET."""
        cached = self.env.redis.get(self.key(user_id))
        if cached is not None:
            return str(json.loads(cached))
        with self.Sessions() as s:
            nickname = s.get(self.User, user_id).nickname
        self.env.redis.set(self.key(user_id), json.dumps(nickname), ex=300)
        return str(nickname)

    def api_get(self, user_id: int) -> str:
        return str(self.cache.get(user_id, session=self.Sessions).nickname)

    def cached_nickname(self, user_id: int) -> str | None:
        """What Redis holds for the user now, decoded (None: no value)."""
        data = self.env.redis.get(self.key(user_id))
        if data is None or data.startswith(JsonSerializer.marker):
            return None
        value = JsonSerializer().loads(data)
        return str(value.nickname if isinstance(value, self.User) else value)

    def close(self) -> None:
        unregister(self.User)
        self.engine.dispose()


@pytest.fixture
def app(binlog_env: BinlogEnv) -> Iterator[App]:
    configure_reads(ReadStore(client=binlog_env.redis))
    a = App(binlog_env)
    yield a
    a.close()
    configure_reads(None)


def _held_read(app: App, read: Callable[[int], str], user_id: int, writer: Callable[[], None]) -> str:
    """Run *read* in a thread, held after its SELECT while *writer* runs; its result."""
    selected, resume = threading.Event(), threading.Event()
    reader_thread: list[threading.Thread] = []

    def hold() -> None:
        if threading.current_thread() is reader_thread[0]:
            selected.set()
            assert resume.wait(30), "the test never released the reader"

    results: list[str] = []
    reader_thread.append(threading.Thread(target=lambda: results.append(read(user_id))))
    app.hold = hold
    try:
        reader_thread[0].start()
        assert selected.wait(30), "the reader never reached its SELECT"
        writer()
        resume.set()
        reader_thread[0].join(30)
    finally:
        app.hold = None
    return results[0]


def test_the_stale_set_race_deterministically(binlog_env: BinlogEnv, app: App) -> None:
    env = binlog_env
    env.sql("INSERT INTO users VALUES (1, 'ann', 'v1', NULL, 0)")
    env.sql("INSERT INTO users VALUES (2, 'bob', 'v1', NULL, 0)")
    with running(env.sidecar()):
        env.sync_point()

        def commit_and_invalidate(user_id: int) -> Callable[[], None]:
            def writer() -> None:
                env.sql("UPDATE users SET nickname = 'v2' WHERE id = %s", (user_id,))
                env.sync_point()  # the sidecar has applied the UPDATE: its UNLINK is done

            return writer

        # Plain get/set: the old row read before the commit is stored after the invalidation.
        assert _held_read(app, app.naive_get, 1, commit_and_invalidate(1)) == "v1"
        assert app.cached_nickname(1) == "v1", "plain get/set was expected to end stale"
        assert env.sql("SELECT nickname FROM users WHERE id = 1")[0][0] == "v2"

        # The read API: the sidecar's UNLINK removed the lease, so the late fill is refused.
        key = app.key(2)
        assert _held_read(app, app.api_get, 2, commit_and_invalidate(2)) == "v1"
        assert not env.redis.exists(key), f"a stale value was stored: {env.redis.get(key)!r}"
        assert app.api_get(2) == "v2"
        assert app.cached_nickname(2) == "v2"


def _stress(
    app: App, read: Callable[[int], str], *, ids: int, writes: int, rounds: int
) -> tuple[int, int]:
    """Readers with a slow loader against a raw-SQL writer, *rounds* times.

    Returns (stale, cached) summed over the rounds' end states: each round ends
    once the sidecar applied every write and the readers went on for a while; a
    stale entry then is one that no later change will ever remove.
    """
    env = app.env
    stale = cached_total = 0
    for round_ in range(rounds):
        stop = threading.Event()
        errors: list[BaseException] = []

        def reader(stop: threading.Event = stop, errors: list[BaseException] = errors) -> None:
            rnd = random.Random()
            while not stop.is_set():
                try:
                    read(rnd.randint(1, ids))
                except BaseException as exc:
                    errors.append(exc)
                    return

        app.hold = lambda: time.sleep(random.uniform(0.02, 0.1))  # SELECT done, fill pending
        threads = [threading.Thread(target=reader) for _ in range(6)]
        for t in threads:
            t.start()
        try:
            rnd = random.Random(round_)
            for n in range(writes):
                env.sql(
                    "UPDATE users SET nickname = %s WHERE id = %s",
                    (f"r{round_}w{n}", rnd.randint(1, ids)),
                )
                time.sleep(0.005)
            env.sync_point()  # every UPDATE's invalidation applied
            time.sleep(0.2)  # readers go on for a while after the last invalidation
        finally:
            stop.set()
            for t in threads:
                t.join(60)
            app.hold = None
        assert not errors, errors[:3]
        current = {int(r[0]): str(r[1]) for r in env.sql("SELECT id, nickname FROM users")}
        cached = {i: app.cached_nickname(i) for i in range(1, ids + 1)}
        present = {i: v for i, v in cached.items() if v is not None}
        stale += sum(1 for i, v in present.items() if v != current[i])
        cached_total += len(present)
        env.redis.unlink(*[app.key(i) for i in range(1, ids + 1)])
    return stale, cached_total


def test_stress_read_api_ends_with_no_stale_entry_naive_beside_it(
    binlog_env: BinlogEnv, app: App
) -> None:
    env = binlog_env
    ids, writes, rounds = 5, 150, 4
    for i in range(1, ids + 1):
        env.sql("INSERT INTO users VALUES (%s, %s, 'v0', NULL, 0)", (i, f"user{i}"))
    with running(env.sidecar()):
        env.sync_point()
        naive_stale, naive_cached = _stress(
            app, app.naive_get, ids=ids, writes=writes, rounds=rounds
        )
        api_stale, api_cached = _stress(app, app.api_get, ids=ids, writes=writes, rounds=rounds)
    print(
        f"\nstale-set stress ({rounds} rounds x {ids} rows, {writes} raw-SQL updates a round, "
        f"6 readers, slow loader, live sidecar): plain get/set {naive_stale} stale of "
        f"{naive_cached} cached; read API {api_stale} stale of {api_cached} cached"
    )
    assert api_stale == 0
