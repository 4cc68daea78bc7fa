"""ORM ``update()`` / ``delete()`` statements executed through the session."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import Engine, delete, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from cachesync.contrib.sqlalchemy import install, uninstall

from .conftest import RecordingFastPath, World

pytestmark = pytest.mark.services


@pytest.fixture
def users(Sessions: sessionmaker[Session], world: World, fast: RecordingFastPath) -> None:
    with Sessions.begin() as s:
        s.add_all(
            [
                world.User(id=1, username="alice", nickname="red", karma=-5),
                world.User(id=2, username="bob", nickname="red", karma=3),
                world.User(id=3, username="carol", nickname="blue", karma=-1),
            ]
        )
    fast.batches.clear()


def names(Sessions: sessionmaker[Session], world: World) -> dict[int, str]:
    with Sessions() as s:
        return {id: name for id, name in s.execute(select(world.User.id, world.User.username))}


@pytest.mark.usefixtures("users")
def test_update_where_deletes_old_and_new_keys_of_matching_rows(
    Sessions: sessionmaker[Session], world: World, fast: RecordingFastPath
) -> None:
    old = [*world.user_keys(1, "alice"), *world.user_keys(3, "carol")]
    new = [*world.user_keys(1, "alice!"), *world.user_keys(3, "carol!")]
    untouched = world.user_keys(2, "bob")
    world.seed(*old, *new, *untouched)
    with Sessions.begin() as s:
        result = s.execute(
            update(world.User)
            .where(world.User.karma < 0)
            .values(username=world.User.username + "!")  # an SQL expression: read back
        )
        assert result.rowcount == 2  # type: ignore[attr-defined]
        assert world.present(*old) == set(old)  # still waiting for the commit
    assert names(Sessions, world) == {1: "alice!", 2: "bob", 3: "carol!"}
    assert world.present(*old, *new) == set()
    assert world.present(*untouched) == set(untouched)
    # the intents saw real before/after pairs
    assert fast.delivered >= {world.list_key("red"), world.list_key("blue")}


@pytest.mark.usefixtures("users")
def test_bulk_update_by_primary_key(
    Sessions: sessionmaker[Session], world: World, fast: RecordingFastPath
) -> None:
    keys = [*world.user_keys(1, "alice"), *world.user_keys(1, "ann"), *world.user_keys(2, "bob")]
    keys += world.user_keys(2, "ben")
    world.seed(*keys)
    with Sessions.begin() as s:
        s.execute(
            update(world.User),
            [{"id": 1, "username": "ann"}, {"id": 2, "username": "ben"}],
        )
    assert names(Sessions, world)[1] == "ann"
    assert world.present(*keys) == set()


@pytest.mark.usefixtures("users")
def test_delete_where_deletes_the_keys_of_the_deleted_rows(
    Sessions: sessionmaker[Session], world: World, fast: RecordingFastPath
) -> None:
    gone = [*world.user_keys(1, "alice"), *world.user_keys(2, "bob")]
    kept = world.user_keys(3, "carol")
    world.seed(*gone, *kept)
    with Sessions.begin() as s:
        s.execute(delete(world.User).where(world.User.nickname == "red"))
    assert names(Sessions, world) == {3: "carol"}
    assert world.present(*gone) == set()
    assert world.present(*kept) == set(kept)
    assert world.list_key("red") in fast.delivered


@pytest.mark.usefixtures("users")
def test_bulk_statement_rolled_back_deletes_nothing(
    Sessions: sessionmaker[Session], world: World, fast: RecordingFastPath
) -> None:
    with Sessions() as s:
        s.execute(delete(world.User).where(world.User.id == 1))
        savepoint = s.begin_nested()
        s.execute(update(world.User).where(world.User.id == 2).values(username="x"))
        savepoint.rollback()
        s.rollback()
    with Sessions() as s:
        s.execute(update(world.User).where(world.User.id == 3).values(username="y"))
        with s.begin_nested() as sp:
            s.execute(update(world.User).where(world.User.id == 2).values(username="z"))
            sp.rollback()
        s.commit()
    assert fast.delivered >= set(world.user_keys(3, "carol"))
    assert not fast.delivered & {*world.user_keys(1, "alice"), *world.user_keys(2, "bob")}


@pytest.mark.usefixtures("users")
def test_primary_key_change_collects_before_keys_only(
    Sessions: sessionmaker[Session],
    world: World,
    fast: RecordingFastPath,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG, "cachesync.contrib.sqlalchemy"), Sessions.begin() as s:
        s.execute(update(world.User).where(world.User.id == 3).values(id=30))
    assert fast.delivered == set(world.user_keys(3, "carol"))  # no intents from half a pair
    assert "may change primary keys" in caplog.text


@pytest.mark.usefixtures("users")
def test_more_rows_than_the_limit_are_left_to_the_binlog(
    engine: Engine, world: World, fast: RecordingFastPath, caplog: pytest.LogCaptureFixture
) -> None:
    maker = sessionmaker(engine)
    install(maker, fast_path=fast, max_bulk_rows=2)
    try:
        with caplog.at_level(logging.DEBUG, "cachesync.contrib.sqlalchemy"), maker.begin() as s:
            s.execute(update(world.User).values(karma=0))  # 3 rows
            s.execute(update(world.User).where(world.User.id < 3).values(karma=1))  # 2 rows
    finally:
        uninstall(maker)
    assert "more than max_bulk_rows=2" in caplog.text
    assert fast.delivered == {*world.user_keys(1, "alice"), *world.user_keys(2, "bob")} | {
        world.list_key("red")
    }


@pytest.mark.usefixtures("users")
def test_statements_the_hooks_cannot_see_through(
    Sessions: sessionmaker[Session],
    world: World,
    fast: RecordingFastPath,
    caplog: pytest.LogCaptureFixture,
) -> None:
    table = world.User.__table__
    with caplog.at_level(logging.DEBUG, "cachesync.contrib.sqlalchemy"), Sessions.begin() as s:
        s.execute(update(table).where(table.c.id == 1).values(karma=7))  # Core, no entity
        s.execute(  # criteria over another table
            update(world.User)
            .where(world.User.id == world.Post.user_id)
            .values(karma=8)
            .execution_options(synchronize_session=False)
        )
    assert fast.batches == []
    assert "criteria read other tables" in caplog.text


@pytest.mark.usefixtures("users")
def test_no_match_collects_nothing(
    Sessions: sessionmaker[Session], world: World, fast: RecordingFastPath
) -> None:
    with Sessions.begin() as s:
        s.execute(update(world.User).where(world.User.id == 99).values(karma=1))
        s.execute(delete(world.User).where(world.User.id == 99))
    assert fast.batches == []


@pytest.mark.parametrize("engine", ["sqlite"], indirect=True)  # MariaDB has no UPDATE RETURNING
@pytest.mark.usefixtures("users")
def test_update_returning_keeps_its_rows_for_the_caller(
    Sessions: sessionmaker[Session], world: World, fast: RecordingFastPath
) -> None:
    with Sessions.begin() as s:
        rows = s.execute(
            update(world.User)
            .where(world.User.id == 1)
            .values(username="ann")
            .returning(world.User.id, world.User.username)
        ).all()
    assert [tuple(r) for r in rows] == [(1, "ann")]
    assert fast.delivered == {
        *world.user_keys(1, "alice"),
        *world.user_keys(1, "ann"),
        world.list_key("red"),
    }


@pytest.mark.usefixtures("users")
def test_delete_returning(
    Sessions: sessionmaker[Session], world: World, fast: RecordingFastPath
) -> None:
    with Sessions.begin() as s:
        ids = s.scalars(
            delete(world.User).where(world.User.karma < 0).returning(world.User.id)
        ).all()
    assert sorted(ids) == [1, 3]
    assert fast.delivered >= {*world.user_keys(1, "alice"), *world.user_keys(3, "carol")}


def test_the_hooks_leave_do_orm_execute_alone(Sessions: sessionmaker[Session]) -> None:
    """With a do_orm_execute listener SQLAlchemy builds an ORMExecuteState and runs
    orm_pre_session_exec twice for EVERY ORM statement (each SELECT, each refresh of
    an expired instance): the bulk statements are tracked on the Core events instead."""
    with Sessions() as s:
        assert len(s.dispatch.do_orm_execute) == 0


@pytest.mark.usefixtures("users")
def test_an_orm_statement_on_the_sessions_own_connection_is_tracked(
    Sessions: sessionmaker[Session], world: World, fast: RecordingFastPath
) -> None:
    with Sessions.begin() as s:
        s.connection().execute(update(world.User).where(world.User.id == 2).values(username="b2"))
    assert fast.delivered >= {*world.user_keys(2, "bob"), *world.user_keys(2, "b2")}


@pytest.mark.usefixtures("users")
def test_a_failing_statement_leaves_the_next_one_tracked(
    Sessions: sessionmaker[Session], world: World, fast: RecordingFastPath
) -> None:
    with Sessions() as s:
        s.execute(update(world.User).where(world.User.id == 1).values(karma=1))
        with pytest.raises(DBAPIError), s.begin_nested():
            # the pre-read sees row 3; the UPDATE itself fails (user_name is NOT NULL)
            s.execute(update(world.User).where(world.User.id == 3).values(username=None))
        s.execute(update(world.User).where(world.User.id == 2).values(username="b3"))
        s.commit()
    assert fast.delivered >= {*world.user_keys(1, "alice"), *world.user_keys(2, "b3")}
    assert not fast.delivered & set(world.user_keys(3, "carol"))
