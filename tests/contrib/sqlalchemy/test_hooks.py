"""Session hooks against the private MariaDB + Redis (and a file SQLite): which keys go, and when."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from cachesync.contrib.sqlalchemy import install, installed, no_sync, uninstall

from .conftest import RecordingFastPath, World

pytestmark = pytest.mark.services


def add_user(Sessions: sessionmaker[Session], world: World, id: int, username: str) -> None:
    with Sessions.begin() as s:
        s.add(world.User(id=id, username=username, nickname="n"))


def test_commit_deletes_every_declared_key(
    Sessions: sessionmaker[Session], world: World, fast: RecordingFastPath
) -> None:
    keys = world.user_keys(1, "alice")
    world.seed(*keys, f"{world.prefix}unrelated")
    with Sessions() as s:
        s.add(world.User(id=1, username="alice", nickname="n"))
        s.flush()
        assert world.present(*keys) == set(keys), "nothing is deleted before the commit"
        s.commit()
    assert world.present(*keys) == set()
    assert world.present(f"{world.prefix}unrelated")
    assert fast.batches == [[*keys, world.list_key("n")]]


def test_rename_deletes_the_old_and_the_new_key(
    Sessions: sessionmaker[Session], world: World, fast: RecordingFastPath
) -> None:
    add_user(Sessions, world, 1, "alice")
    keys = [*world.user_keys(1, "alice"), *world.user_keys(1, "bob")]
    world.seed(*keys)
    with Sessions() as s:
        user = s.get(world.User, 1)
        assert user is not None
        s.commit()  # expires every attribute: the old username is no longer loaded
        user.username = "bob"
        s.commit()
    assert world.present(*keys) == set()
    assert set(fast.batches[-1]) >= set(keys)


def test_delete_of_an_expired_instance_deletes_its_keys(
    Sessions: sessionmaker[Session], world: World
) -> None:
    add_user(Sessions, world, 1, "alice")
    keys = world.user_keys(1, "alice")
    world.seed(*keys)
    with Sessions() as s:
        user = s.get(world.User, 1)
        s.commit()
        s.delete(user)
        s.commit()
    assert world.present(*keys) == set()


def test_delete_of_an_instance_whose_key_column_was_never_loaded(
    Sessions: sessionmaker[Session], world: World
) -> None:
    # SQLAlchemy loads expired columns itself before a DELETE, but not deferred ones:
    # the hooks must read them while the row still exists.
    with Sessions.begin() as s:
        s.add(world.Doc(id=1, slug="hello"))
    key = f"{world.prefix}doc:hello"
    world.seed(key)
    with Sessions() as s:
        doc = s.get(world.Doc, 1)
        assert doc is not None and "slug" not in doc.__dict__
        s.delete(doc)
        s.commit()
    assert world.present(key) == set()


def test_rollback_deletes_nothing_and_leaves_no_outbox_row(
    Sessions: sessionmaker[Session], world: World, fast: RecordingFastPath, engine: Engine
) -> None:
    add_user(Sessions, world, 1, "alice")
    before = world.outbox_count(engine)
    keys = [*world.user_keys(1, "alice"), *world.user_keys(1, "bob"), *world.user_keys(2, "eve")]
    world.seed(*keys)
    fast.batches.clear()
    with Sessions() as s:
        s.get(world.User, 1).username = "bob"  # type: ignore[union-attr]
        s.add(world.User(id=2, username="eve"))
        s.flush()
        s.rollback()
    assert world.present(*keys) == set(keys)
    assert fast.batches == []
    assert world.outbox_count(engine) == before


def test_rolled_back_savepoint_drops_only_its_own_keys(
    Sessions: sessionmaker[Session], world: World
) -> None:
    outer, inner = world.user_keys(1, "alice"), world.user_keys(2, "bob")
    world.seed(*outer, *inner)
    with Sessions() as s:
        s.add(world.User(id=1, username="alice"))
        s.flush()
        savepoint = s.begin_nested()
        s.add(world.User(id=2, username="bob"))
        s.flush()
        savepoint.rollback()
        s.commit()
    assert world.present(*outer) == set()
    assert world.present(*inner) == set(inner)


def test_savepoint_as_context_manager_rolled_back_by_an_exception(
    Sessions: sessionmaker[Session], world: World
) -> None:
    outer, inner = world.user_keys(1, "alice"), world.user_keys(2, "bob")
    world.seed(*outer, *inner)
    with Sessions() as s:
        s.add(world.User(id=1, username="alice"))
        with pytest.raises(RuntimeError), s.begin_nested():
            s.add(world.User(id=2, username="bob"))
            s.flush()
            raise RuntimeError("abandon the savepoint")
        s.commit()
    assert world.present(*outer) == set()
    assert world.present(*inner) == set(inner)


def test_released_savepoint_waits_for_the_outermost_commit(
    Sessions: sessionmaker[Session], world: World, fast: RecordingFastPath
) -> None:
    keys = world.user_keys(1, "alice")
    world.seed(*keys)
    with Sessions() as s:
        with s.begin_nested():
            s.add(world.User(id=1, username="alice"))
        assert fast.batches == [] and world.present(*keys) == set(keys)
        s.commit()
    assert world.present(*keys) == set()
    assert len(fast.batches) == 1


def test_nested_savepoints(Sessions: sessionmaker[Session], world: World) -> None:
    k = {i: world.user_keys(i, f"u{i}") for i in range(1, 7)}
    world.seed(*(key for keys in k.values() for key in keys))

    def add(s: Session, i: int) -> None:
        s.add(world.User(id=i, username=f"u{i}"))
        s.flush()

    with Sessions() as s:
        add(s, 1)
        sp1 = s.begin_nested()
        add(s, 2)
        sp2 = s.begin_nested()
        add(s, 3)
        sp2.rollback()  # drops 3 only
        sp1.commit()  # 2 merges into the root
        sp3 = s.begin_nested()
        add(s, 4)
        sp4 = s.begin_nested()
        add(s, 5)
        sp4.commit()  # 5 merges into sp3 ...
        sp3.rollback()  # ... and goes with it
        s.begin_nested()
        s.begin_nested()
        add(s, 6)
        s.commit()  # releases both open savepoints, then commits
    gone = {i for i, keys in k.items() if not world.present(*keys)}
    kept = {i for i, keys in k.items() if world.present(*keys) == set(keys)}
    assert gone == {1, 2, 6}
    assert kept == {3, 4, 5}


def test_rollback_drops_released_savepoints_too(
    Sessions: sessionmaker[Session], world: World, fast: RecordingFastPath
) -> None:
    keys = world.user_keys(1, "alice")
    world.seed(*keys)
    with Sessions() as s:
        with s.begin_nested():
            s.add(world.User(id=1, username="alice"))
        s.rollback()
    assert world.present(*keys) == set(keys)
    assert fast.batches == []


def test_failed_flush_in_a_savepoint_keeps_the_outer_keys(
    Sessions: sessionmaker[Session], world: World
) -> None:
    add_user(Sessions, world, 1, "alice")
    outer = world.user_keys(2, "bob")
    world.seed(*outer)
    with Sessions() as s:
        s.add(world.User(id=2, username="bob"))
        s.flush()
        with pytest.raises(IntegrityError), s.begin_nested():
            s.add(world.User(id=1, username="duplicate"))
            s.flush()
        s.commit()
    assert world.present(*outer) == set()


def test_no_sync_collects_nothing(
    Sessions: sessionmaker[Session], world: World, fast: RecordingFastPath, engine: Engine
) -> None:
    keys = world.user_keys(1, "alice")
    world.seed(*keys)
    with no_sync(), Sessions.begin() as s:
        s.add(world.User(id=1, username="alice"))
    assert world.present(*keys) == set(keys)
    assert fast.batches == []
    assert world.outbox_count(engine) == 0
    # the switch is scoped: the next transaction is tracked again
    with Sessions.begin() as s:
        s.get(world.User, 1).username = "bob"  # type: ignore[union-attr]
    assert world.present(*keys) == set()


def test_orphans_and_cascades_are_collected(Sessions: sessionmaker[Session], world: World) -> None:
    with Sessions.begin() as s:
        user = world.User(id=1, username="alice")
        user.posts = [world.Post(id=10), world.Post(id=11)]
        s.add(user)
    orphan, cascaded = world.post_keys(10, 1), world.post_keys(11, 1)
    world.seed(*orphan, *cascaded)
    with Sessions() as s:
        user = s.get(world.User, 1)
        assert user is not None
        user.posts.remove(next(p for p in user.posts if p.id == 10))  # delete-orphan
        s.commit()
        assert world.present(*orphan) == set()
        world.seed(*orphan)
        s.delete(s.get(world.User, 1))  # cascades to post 11
        s.commit()
    assert world.present(*cascaded) == set()


def test_moving_a_child_between_parents_deletes_both_parents_keys(
    Sessions: sessionmaker[Session], world: World
) -> None:
    with Sessions.begin() as s:
        s.add_all(
            [
                world.User(id=1, username="alice", posts=[world.Post(id=10)]),
                world.User(id=2, username="bob"),
            ]
        )
    keys = [*world.post_keys(10, 1), *world.post_keys(10, 2)]
    world.seed(*keys)
    with Sessions.begin() as s:
        post = s.get(world.Post, 10)
        assert post is not None
        post.user = s.get(world.User, 2)  # the foreign key changes only during the flush
    assert world.present(*keys) == set()


def test_unchanged_and_undeclared_rows_deliver_nothing(
    Sessions: sessionmaker[Session], world: World, fast: RecordingFastPath
) -> None:
    add_user(Sessions, world, 1, "alice")
    fast.batches.clear()
    with Sessions.begin() as s:
        user = s.get(world.User, 1)
        assert user is not None
        user.username = "alice"  # same value: no UPDATE, no keys
        s.add(world.Plain(id=1, name="not declared"))
    assert fast.batches == []


def test_keys_of_a_row_changed_twice_are_delivered_once(
    Sessions: sessionmaker[Session], world: World, fast: RecordingFastPath
) -> None:
    with Sessions.begin() as s:
        user = world.User(id=1, username="alice", nickname="a")
        s.add(user)
        s.flush()
        user.username = "bob"
        s.flush()
        user.username = "carol"
    (batch,) = fast.batches
    assert len(batch) == len(set(batch))
    expected = {*world.user_keys(1, "alice"), *world.user_keys(1, "bob")}
    assert set(batch) >= expected | set(world.user_keys(1, "carol"))


def test_install_is_idempotent_and_the_most_specific_target_wins(
    engine: Engine, world: World, fast: RecordingFastPath
) -> None:
    other = RecordingFastPath()

    class AppSession(Session):
        pass

    maker = sessionmaker(engine, class_=AppSession)
    install(AppSession, fast_path=other)
    install(AppSession, fast_path=other)
    install(maker, fast_path=fast)
    install(maker, fast_path=fast)
    try:
        assert installed(maker) is not None
        with maker.begin() as s:
            s.add(world.User(id=1, username="alice"))
        assert other.batches == []
        assert len(fast.batches) == 1
        uninstall(maker)
        with maker.begin() as s:
            s.add(world.User(id=2, username="bob"))
        assert len(fast.batches) == 1
        assert len(other.batches) == 1  # the class-level installation took over
    finally:
        uninstall(maker)
        uninstall(AppSession)
    with maker.begin() as s:
        s.add(world.User(id=3, username="carol"))
    assert len(other.batches) == len(fast.batches) == 1


def test_a_long_lived_session_follows_later_installs(
    engine: Engine, world: World, fast: RecordingFastPath
) -> None:
    """A session caches which installation owns it; install()/uninstall() make that stale."""
    other = RecordingFastPath()
    maker = sessionmaker(engine)
    install(maker, fast_path=fast)
    try:
        with maker() as s:
            s.add(world.User(id=1, username="alice"))
            s.commit()
            install(maker, fast_path=other)  # new options for the same target
            s.add(world.User(id=2, username="bob"))
            s.commit()
            uninstall(maker)
            s.add(world.User(id=3, username="carol"))
            s.commit()
    finally:
        uninstall(maker)
    assert fast.delivered >= set(world.user_keys(1, "alice"))
    assert not fast.delivered & set(world.user_keys(2, "bob"))
    assert other.delivered >= set(world.user_keys(2, "bob"))
    assert not (fast.delivered | other.delivered) & set(world.user_keys(3, "carol"))


def test_install_on_one_session_instance(
    engine: Engine, world: World, fast: RecordingFastPath
) -> None:
    with Session(engine) as tracked, Session(engine) as untracked:
        install(tracked, fast_path=fast)
        try:
            tracked.add(world.User(id=1, username="alice"))
            tracked.commit()
            untracked.add(world.User(id=2, username="bob"))
            untracked.commit()
        finally:
            uninstall(tracked)
    assert fast.delivered >= set(world.user_keys(1, "alice"))
    assert not fast.delivered & set(world.user_keys(2, "bob"))


def test_scoped_session_target(engine: Engine, world: World, fast: RecordingFastPath) -> None:
    from sqlalchemy.orm import scoped_session

    scoped = scoped_session(sessionmaker(engine))
    install(scoped, fast_path=fast)
    try:
        scoped.add(world.User(id=1, username="alice"))
        scoped.commit()
    finally:
        scoped.remove()
        uninstall(scoped)
    assert fast.delivered >= set(world.user_keys(1, "alice"))


def test_server_side_values_are_read_after_the_insert(
    Sessions: sessionmaker[Session], world: World, fast: RecordingFastPath
) -> None:
    # username set, nickname never set: the INSERT stored NULL, so the intent sees None
    with Sessions.begin() as s:
        s.add(world.User(id=1, username="alice"))
    assert world.list_key(None) in fast.delivered
    with Sessions() as s:
        assert s.scalar(select(world.User.nickname).where(world.User.id == 1)) is None


def test_install_rejects_what_it_cannot_hook() -> None:
    from cachesync.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="expects a Session subclass"):
        install(object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="outbox= expects a sqlalchemy Table"):
        install(Session, outbox="cachesync_outbox")  # type: ignore[arg-type]
