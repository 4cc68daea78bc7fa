"""The outbox: ``outbox_table()`` mirrors the plain-SQL schema; intent rows commit with the change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, MetaData, inspect, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from cachesync.actions import DeleteKeys
from cachesync.codec import decode_actions
from cachesync.contrib.sqlalchemy import install, no_sync, outbox_table, uninstall
from cachesync.outbox.schema import COLUMNS, create_table_sql

from .conftest import RUN, RecordingFastPath, World, sqlite_engine

pytestmark = pytest.mark.services


def _shape(engine: Engine, name: str) -> dict[str, Any]:
    """What matters of a table, as the database reports it."""
    insp = inspect(engine)
    columns = {
        c["name"]: (
            str(c["type"]).split(" COLLATE")[0].replace("INT(11)", "INTEGER"),
            getattr(c["type"], "fsp", None),  # DATETIME(6) on MySQL
            c["nullable"],
            c.get("autoincrement"),
            str(c.get("default")).strip("'\"()") if c.get("default") is not None else None,
        )
        for c in insp.get_columns(name)
    }
    indexes = {tuple(i["column_names"]) for i in insp.get_indexes(name)}
    return {
        "order": [c["name"] for c in insp.get_columns(name)],
        "columns": columns,
        "pk": insp.get_pk_constraint(name)["constrained_columns"],
        "indexes": indexes,
    }


@pytest.fixture(params=["mariadb", "sqlite"])
def ddl_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "mariadb":
        yield request.getfixturevalue("mariadb")
    else:
        engine = sqlite_engine(tmp_path / "ddl.db")
        yield engine
        engine.dispose()


def test_outbox_table_mirrors_the_plain_sql_schema(ddl_engine: Engine) -> None:
    dialect = "mysql" if ddl_engine.dialect.name in ("mysql", "mariadb") else "sqlite"
    by_sql, by_table = f"sa_{RUN}_ob_sql", f"sa_{RUN}_ob_table"
    metadata = MetaData()
    table = outbox_table(metadata, by_table)
    assert outbox_table(metadata, by_table) is table  # defined once per metadata
    try:
        with ddl_engine.begin() as conn:
            conn.exec_driver_sql(create_table_sql(by_sql, dialect))
        metadata.create_all(ddl_engine)
        plain, ours = _shape(ddl_engine, by_sql), _shape(ddl_engine, by_table)
        if dialect == "sqlite":
            # SQLite reports INTEGER PRIMARY KEY without NOT NULL as nullable; it is the
            # rowid and can never be NULL either way.
            plain["columns"]["id"] = ours["columns"]["id"]
            with ddl_engine.connect() as conn:
                sql = conn.execute(
                    text("SELECT sql FROM sqlite_master WHERE name = :n"), {"n": by_table}
                ).scalar_one()
            assert "PRIMARY KEY AUTOINCREMENT" in sql  # ids never reused, as in the plain DDL
        assert plain["order"] == ours["order"] == list(COLUMNS)
        assert ours["columns"] == plain["columns"]
        assert ours["pk"] == plain["pk"] == ["id"]
        if dialect == "mysql":  # the plain DDL indexes (state, id) on MySQL only
            assert ours["indexes"] == plain["indexes"] == {("state", "id")}
        with ddl_engine.begin() as conn:  # defaults fill the same way in both
            for name in (by_sql, by_table):
                conn.execute(text(f"INSERT INTO {name} (kind, payload) VALUES ('intent', '[]')"))
            rows = [
                conn.execute(text(f"SELECT state, attempts, created_at FROM {n}")).one()
                for n in (by_sql, by_table)
            ]
        assert [r[:2] for r in rows] == [("pending", 0), ("pending", 0)]
        assert all(r[2] is not None for r in rows)
    finally:
        with ddl_engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {by_sql}")
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {by_table}")


def test_outbox_ddl_compiles_for_postgresql() -> None:
    from sqlalchemy.dialects import postgresql
    from sqlalchemy.schema import CreateTable

    ddl = str(CreateTable(outbox_table(MetaData())).compile(dialect=postgresql.dialect()))
    assert "id BIGSERIAL NOT NULL" in ddl
    assert "created_at TIMESTAMP(6) WITHOUT TIME ZONE DEFAULT CURRENT_TIMESTAMP NOT NULL" in ddl
    assert "payload TEXT NOT NULL" in ddl


def _intents(row: Any) -> list[str]:
    (action,) = decode_actions(row.payload)
    assert isinstance(action, DeleteKeys) and action.position is None
    return list(action.keys)


def test_intent_row_commits_with_the_change_and_decodes(
    Sessions: sessionmaker[Session], world: World, observer: Engine
) -> None:
    with Sessions() as s:
        s.add(world.User(id=1, username="alice", nickname="cats"))
        s.flush()
        assert world.outbox_count(observer) == 0  # nothing before the commit
        s.commit()
    (row,) = world.outbox_rows(observer)  # another connection sees it
    assert (row.kind, row.state, row.attempts, row.available_at, row.last_error) == (
        "intent",
        "pending",
        0,
        None,
        None,
    )
    assert row.created_at is not None
    assert _intents(row) == [world.list_key("cats")]


def test_rollback_leaves_no_outbox_row(
    Sessions: sessionmaker[Session], world: World, observer: Engine
) -> None:
    with Sessions() as s:
        s.add(world.User(id=1, username="alice", nickname="cats"))
        s.flush()
        s.rollback()
    assert world.outbox_count(observer) == 0


def test_commit_failing_after_the_outbox_insert_leaves_no_row(
    Sessions: sessionmaker[Session], world: World, observer: Engine
) -> None:
    # The duplicate key surfaces in the flush the hooks run in before_commit; the
    # business change and its outbox row fail together.
    with Sessions.begin() as s:
        s.add(world.User(id=1, username="alice"))
    assert world.outbox_count(observer) == 1
    with pytest.raises(IntegrityError), Sessions() as s:
        s.add(world.User(id=2, username="bob", nickname="x"))
        s.add(world.User(id=1, username="duplicate"))
        s.commit()
    assert world.outbox_count(observer) == 1


def test_changes_left_for_commits_own_autoflush_are_in_the_row(
    Sessions: sessionmaker[Session], world: World, observer: Engine
) -> None:
    with Sessions() as s:
        s.add(world.User(id=1, username="alice", nickname="dogs"))
        s.commit()  # no explicit flush: before_commit fires before commit's autoflush
    (row,) = world.outbox_rows(observer)
    assert _intents(row) == [world.list_key("dogs")]


def test_one_row_per_transaction_with_every_intent_once(
    Sessions: sessionmaker[Session], world: World, observer: Engine
) -> None:
    with Sessions.begin() as s:
        s.add_all([world.User(id=i, username=f"u{i}", nickname=n) for i, n in ((1, "a"), (2, "b"))])
    with Sessions.begin() as s:
        s.get(world.User, 1).nickname = "b"  # type: ignore[union-attr]
    first, second = world.outbox_rows(observer)
    assert sorted(_intents(first)) == [world.list_key("a"), world.list_key("b")]
    assert _intents(second) == [world.list_key("a"), world.list_key("b")]
    assert first.id < second.id


def test_rolled_back_savepoint_intents_are_excluded(
    Sessions: sessionmaker[Session], world: World, observer: Engine
) -> None:
    with Sessions() as s:
        s.add(world.User(id=1, username="alice", nickname="kept"))
        with s.begin_nested():
            s.add(world.User(id=2, username="bob", nickname="released"))
        savepoint = s.begin_nested()
        s.add(world.User(id=3, username="carol", nickname="dropped"))
        s.flush()
        savepoint.rollback()
        s.commit()
    (row,) = world.outbox_rows(observer)
    assert sorted(_intents(row)) == [world.list_key("kept"), world.list_key("released")]


def test_no_row_without_intents_or_inside_no_sync(
    Sessions: sessionmaker[Session], world: World, observer: Engine
) -> None:
    with Sessions.begin() as s:
        s.add(world.Doc(id=1, slug="no-intents"))  # Doc declares keys only
    with no_sync(), Sessions.begin() as s:
        s.add(world.User(id=1, username="alice"))
    with Sessions.begin():
        pass
    assert world.outbox_count(observer) == 0


def test_bulk_statement_intents_reach_the_outbox(
    Sessions: sessionmaker[Session], world: World, observer: Engine
) -> None:
    with Sessions.begin() as s:
        s.add(world.User(id=1, username="alice", nickname="old"))
    with Sessions.begin() as s:
        s.execute(update(world.User).where(world.User.id == 1).values(nickname="new"))
    _, row = world.outbox_rows(observer)
    assert sorted(_intents(row)) == [world.list_key("new"), world.list_key("old")]


def test_without_an_outbox_table_nothing_is_written(
    engine: Engine, world: World, fast: RecordingFastPath, observer: Engine
) -> None:
    maker = sessionmaker(engine)
    install(maker, fast_path=fast)
    try:
        with maker.begin() as s:
            s.add(world.User(id=1, username="alice", nickname="n"))
    finally:
        uninstall(maker)
    assert world.outbox_count(observer) == 0
    assert world.list_key("n") in fast.delivered  # intents still ride the fast path


def test_outbox_row_uses_the_sessions_transaction(
    Sessions: sessionmaker[Session], world: World, observer: Engine
) -> None:
    with Sessions() as s:
        s.add(world.User(id=1, username="alice", nickname="n"))
        s.flush()
        # What before_commit does, observed from inside: the row is there for this
        # transaction only.
        from cachesync.contrib.sqlalchemy import write_intents

        write_intents(s, world.outbox, ["k"])
        assert s.scalar(select(world.outbox.c.payload)) is not None
        assert world.outbox_count(observer) == 0
        s.rollback()
    assert world.outbox_count(observer) == 0


def test_installing_again_adds_and_removes_the_outbox(
    Sessions: sessionmaker[Session], world: World, observer: Engine, fast: RecordingFastPath
) -> None:
    # Without an outbox the hooks do not even listen to before_commit; installing the
    # same target again with one must start writing rows, and without one stop.
    install(Sessions, fast_path=fast)
    with Sessions.begin() as s:
        s.add(world.User(id=1, username="alice", nickname="none"))
    assert world.outbox_count(observer) == 0
    install(Sessions, outbox=world.outbox, fast_path=fast)
    with Sessions.begin() as s:
        s.add(world.User(id=2, username="bob", nickname="some"))
    (row,) = world.outbox_rows(observer)
    assert _intents(row) == [world.list_key("some")]
    install(Sessions, fast_path=fast)
    with Sessions.begin() as s:
        s.add(world.User(id=3, username="carol", nickname="more"))
    assert world.outbox_count(observer) == 1
