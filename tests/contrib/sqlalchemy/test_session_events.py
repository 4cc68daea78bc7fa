"""What the hooks rely on in SQLAlchemy's session events, pinned so an upgrade that changes it fails here.

The hooks decide "committed or rolled back" for every transaction level, so the
order of the events matters:

* a ROLLBACK fires ``after_rollback`` -> ``after_transaction_end`` -> ``after_soft_rollback``:
  the end event comes BEFORE the event that names the rolled-back transaction, so
  ``after_soft_rollback`` cannot be used to veto a merge done at ``after_transaction_end``;
* a COMMIT (root or savepoint release) fires ``before_commit`` -> (final autoflush) ->
  ``after_commit`` -> ``after_transaction_end``, and during ``after_commit`` the committing
  transaction is still the current one (``get_nested_transaction() or get_transaction()``);
* ``flush()`` runs in an internal SUBTRANSACTION whose end is reported too;
* ``before_commit`` fires BEFORE the final autoflush of ``commit()``.

So the hooks mark a level committed in ``after_commit`` and, at ``after_transaction_end``,
merge/deliver committed levels and drop all others.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Integer, String, create_engine, event
from sqlalchemy.orm import (
    DeclarativeBase,
    Session,
    SessionTransaction,
    SessionTransactionOrigin,
    mapped_column,
)


class Base(DeclarativeBase):
    pass


class Row(Base):
    __tablename__ = "sa_events_row"
    id = mapped_column(Integer, primary_key=True)
    name = mapped_column(String(20))


class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []
        # Keyed by the transaction itself (not id()): holding it keeps ids from being reused.
        self.names: dict[SessionTransaction, str] = {}

    def name(self, t: SessionTransaction | None) -> str:
        if t is None:
            return "-"
        if t not in self.names:
            label = {
                SessionTransactionOrigin.AUTOBEGIN: "root",
                SessionTransactionOrigin.BEGIN: "root",
                SessionTransactionOrigin.BEGIN_NESTED: "sp",
                SessionTransactionOrigin.SUBTRANSACTION: "sub",
            }[t.origin]
            self.names[t] = f"{label}{sum(v.startswith(label) for v in self.names.values())}"
        return self.names[t]

    def current(self, s: Session) -> str:
        return self.name(s.get_nested_transaction() or s.get_transaction())


@pytest.fixture
def rec() -> Iterator[tuple[Session, Recorder]]:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    r = Recorder()

    class S(Session):
        pass

    def with_t(name: str) -> None:
        event.listen(S, name, lambda s, t: r.events.append(f"{name}({r.name(t)})"))

    def without_t(name: str) -> None:
        event.listen(S, name, lambda s: r.events.append(f"{name}[{r.current(s)}]"))

    for name in ("after_transaction_create", "after_transaction_end", "after_soft_rollback"):
        with_t(name)
    for name in ("before_commit", "after_commit", "after_rollback"):
        without_t(name)
    event.listen(S, "after_flush", lambda s, ctx: r.events.append(f"after_flush[{r.current(s)}]"))
    with S(engine) as session:
        yield session, r
    engine.dispose()


def test_rollback_reports_the_end_before_the_soft_rollback(rec: tuple[Session, Recorder]) -> None:
    s, r = rec
    s.add(Row(name="a"))
    s.flush()
    r.events.clear()
    s.rollback()
    assert r.events == [
        "after_rollback[root0]",
        "after_transaction_end(root0)",
        "after_soft_rollback(root0)",
    ]


def test_commit_marks_before_end_and_names_the_committing_level(
    rec: tuple[Session, Recorder],
) -> None:
    s, r = rec
    s.add(Row(name="a"))
    s.flush()
    sp = s.begin_nested()
    s.add(Row(name="b"))
    s.flush()
    r.events.clear()
    sp.commit()
    assert r.events == [
        "before_commit[sp0]",
        "after_commit[sp0]",
        "after_transaction_end(sp0)",
    ]
    r.events.clear()
    s.commit()
    assert r.events == [
        "before_commit[root0]",
        "after_commit[root0]",
        "after_transaction_end(root0)",
    ]


def test_savepoint_rollback_order(rec: tuple[Session, Recorder]) -> None:
    s, r = rec
    s.add(Row(name="a"))
    s.flush()
    with pytest.raises(ValueError), s.begin_nested():
        s.add(Row(name="b"))
        s.flush()
        r.events.clear()
        raise ValueError
    assert r.events == [
        "after_rollback[sp0]",
        "after_transaction_end(sp0)",
        "after_soft_rollback(sp0)",
    ]


def test_flush_runs_in_a_subtransaction_of_the_current_level(
    rec: tuple[Session, Recorder],
) -> None:
    s, r = rec
    s.begin()
    s.begin_nested()
    r.events.clear()
    s.add(Row(name="a"))
    s.flush()
    assert r.events == [
        "after_transaction_create(sub0)",
        "after_flush[sp0]",
        "after_transaction_end(sub0)",
    ]


def test_session_rollback_unwinds_every_open_savepoint_innermost_first(
    rec: tuple[Session, Recorder],
) -> None:
    s, r = rec
    s.add(Row(name="a"))
    s.flush()
    s.begin_nested()
    s.begin_nested()
    r.events.clear()
    s.rollback()
    ends = [e for e in r.events if e.startswith("after_transaction_end")]
    assert ends == [
        "after_transaction_end(sp1)",
        "after_transaction_end(sp0)",
        "after_transaction_end(root0)",
    ]
    assert not any(e.startswith("after_commit") for e in r.events)


def test_commit_releases_open_savepoints_innermost_first(rec: tuple[Session, Recorder]) -> None:
    s, r = rec
    s.add(Row(name="a"))
    s.flush()
    s.begin_nested()
    s.begin_nested()
    r.events.clear()
    s.commit()
    marks = [e for e in r.events if e.startswith(("after_commit", "after_transaction_end"))]
    assert marks == [
        "after_commit[sp1]",
        "after_transaction_end(sp1)",
        "after_commit[sp0]",
        "after_transaction_end(sp0)",
        "after_commit[root0]",
        "after_transaction_end(root0)",
    ]


def test_before_commit_fires_before_the_final_autoflush(rec: tuple[Session, Recorder]) -> None:
    s, r = rec
    s.add(Row(name="a"))
    r.events.clear()
    s.commit()
    assert r.events.index("before_commit[root0]") < r.events.index("after_flush[root0]")


def test_close_with_an_open_transaction_ends_it_without_commit(
    rec: tuple[Session, Recorder],
) -> None:
    s, r = rec
    s.add(Row(name="a"))
    s.flush()
    s.begin_nested()
    r.events.clear()
    s.close()
    assert "after_transaction_end(sp0)" in r.events
    assert "after_transaction_end(root0)" in r.events
    assert not any(e.startswith("after_commit") for e in r.events)
