"""Session hooks: collect keys at flush, delete them after the OUTERMOST commit.

This module is what the hooks DO; :mod:`.installation` is which sessions they run
for (``install()``, the owner lookup, the listeners bound to each target).

Everything is wired with ``event.listen``; nothing is patched. Per session, the
hooks keep a :class:`cachesync.transactions.LevelStack` keyed by
``SessionTransaction``: one level for the root transaction and one per open
SAVEPOINT (the merge/drop/deliver rules are the stack's; this module only maps
session events onto it):

* ``after_insert`` / ``after_update`` / ``after_delete`` (mapper events) note which
  instances of declared models the flush really wrote, including orphans and
  cascaded deletes that never appear in ``session.deleted``;
* ``after_flush`` renders their keys into the current level, the before image
  from attribute history (a rename deletes the old key too);
* ``after_commit`` marks the level that committed: SQLAlchemy reports a rollback
  as ``after_rollback`` -> ``after_transaction_end`` -> ``after_soft_rollback``, so
  the end event cannot learn about a rollback in time, but a commit always fires
  ``after_commit`` first (tests/contrib/sqlalchemy/test_session_events.py pins this);
* ``after_transaction_end`` commits a level that committed (a savepoint merges
  into its parent; the root hands the keys to :meth:`FastPath.deliver`, which
  never raises into the application) and rolls back one that did not;
* ``before_commit`` of the root writes the outbox row, when an outbox table is
  configured, after flushing first: SQLAlchemy runs commit's final autoflush
  AFTER ``before_commit``;
* ``after_begin`` hands the session's connection to :mod:`.bulk`, whose Core execute
  events cover ORM ``update()``/``delete()`` statements.

Inside :func:`cachesync.no_sync` nothing is collected.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, event
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.orm import (
    InstanceState,
    Mapper,
    Session,
    SessionTransaction,
    SessionTransactionOrigin,
)
from sqlalchemy.orm.attributes import instance_state

from ... import fastpath
from ...changes import Op
from ...fastpath import FastPath, sync_enabled
from ...transactions import Collected, LevelStack
from . import bulk
from .declare import declared_for
from .images import (
    after_image,
    before_image,
    changed,
    collect_change,
    needs_zone,
    update_images,
)
from .outbox import write_intents

__all__ = ["STATE_KEY", "HookConfig"]

log = logging.getLogger("cachesync.contrib.sqlalchemy")

#: Where a session keeps its :class:`_SessionState` (``session.info`` dies with the session).
STATE_KEY = "cachesync.sqlalchemy"


@dataclass(frozen=True)
class HookConfig:
    """What :func:`install` was told for one target.

    ``outbox``: the table that receives one intent row per transaction, or None.
    ``fast_path``: who deletes the keys after commit; None means the process-wide
    :data:`cachesync.fastpath.fast_path`, looked up at delivery time.
    ``max_bulk_rows``: above this many affected rows a bulk statement's keys are
    left to the binlog path instead of being selected.
    """

    outbox: Table | None = None
    fast_path: FastPath | None = None
    max_bulk_rows: int = 1000


@dataclass
class _SessionState:
    stack: LevelStack[SessionTransaction] = field(default_factory=LevelStack)
    committed: set[SessionTransaction] = field(default_factory=set)
    flushed: list[tuple[Op, InstanceState[Any]]] = field(default_factory=list)
    flushing: bool = False

    def level(self, session: Session) -> Collected:
        """The :class:`Collected` of the innermost open level (savepoint, else root)."""
        nested = session.get_nested_transaction()
        if nested is None:
            # No savepoint: the root alone (never a flush subtransaction), without the walk.
            root = session.get_transaction()
            assert root is not None, "collecting outside a transaction"
            return self.stack.enter((root,)).collected
        return self.stack.enter(_path(nested)).collected


def _path(transaction: SessionTransaction) -> list[SessionTransaction]:
    """The levels from the root to *transaction*, without flush()'s internal subtransactions."""
    path: list[SessionTransaction] = []
    current: SessionTransaction | None = transaction
    while current is not None:
        if current.origin is not SessionTransactionOrigin.SUBTRANSACTION:
            path.append(current)
        current = current.parent
    path.reverse()
    return path


def _state(session: Session, *, create: bool = False) -> _SessionState | None:
    st = session.info.get(STATE_KEY)
    if st is None and create:
        st = session.info[STATE_KEY] = _SessionState()
    return st if isinstance(st, _SessionState) else None


_global_events_installed = False

# ---------------------------------------------------------------------------------------------
# Mapper events: which rows did this flush write?
# ---------------------------------------------------------------------------------------------


def _record(op: Op, target: Any) -> None:
    if declared_for(type(target)) is None or not sync_enabled():
        return
    state = instance_state(target)  # what inspect() returns, without its registry lookup
    session = state.session
    st = _state(session) if session is not None else None
    if st is not None and st.flushing:
        st.flushed.append((op, state))


def _after_insert(mapper: Mapper[Any], connection: Any, target: Any) -> None:
    _record(Op.INSERT, target)


def _after_update(mapper: Mapper[Any], connection: Any, target: Any) -> None:
    _record(Op.UPDATE, target)


def _after_delete(mapper: Mapper[Any], connection: Any, target: Any) -> None:
    _record(Op.DELETE, target)


def _install_global_events() -> None:
    """The process-wide listeners: mapper events, and the engines' execute events of :mod:`.bulk`."""
    global _global_events_installed
    if not _global_events_installed:
        event.listen(Mapper, "after_insert", _after_insert)
        event.listen(Mapper, "after_update", _after_update)
        event.listen(Mapper, "after_delete", _after_delete)
        event.listen(Engine, "before_execute", bulk.before_execute)
        event.listen(Engine, "after_execute", bulk.after_execute)
        _global_events_installed = True


# ---------------------------------------------------------------------------------------------
# Session events
# ---------------------------------------------------------------------------------------------


def _before_flush(session: Session) -> None:
    st = _state(session, create=True)
    assert st is not None
    st.flushed = []
    st.flushing = True
    if not sync_enabled():
        return
    # After its DELETE an instance can no longer load anything: read now the values
    # its keys need (a commit expired them all), while the row still exists.
    pending_deletes = getattr(session, "_deleted", None)  # Session.deleted builds a set
    if pending_deletes is not None and not pending_deletes:
        return
    for obj in list(session.deleted):
        declared = declared_for(type(obj))
        if declared is None:
            continue
        values = sa_inspect(obj).dict
        try:
            for name in declared.needed:
                if name not in values:
                    getattr(obj, name)
        except Exception as exc:  # the row may be gone already; never break the flush
            log.debug(
                "cachesync: %s: values unreadable before delete: %s", declared.spec.model, exc
            )


def _after_flush(session: Session) -> None:
    st = session.info.get(STATE_KEY)
    if not isinstance(st, _SessionState):
        return
    flushed, st.flushed, st.flushing = st.flushed, [], False
    if not flushed or not sync_enabled():
        return
    level = st.level(session)
    # A flush writes instances grouped by mapper: the bind is looked up once per group.
    mapper: Mapper[Any] | None = None
    dialect: Dialect | None = None
    connection: Connection | None = None
    for op, state in flushed:
        declared = declared_for(state.class_)
        if declared is None or not declared.needed:
            continue
        try:
            if state.mapper is not mapper:
                dialect = _dialect(session, state.mapper)
                # Only a TIMESTAMP column needs the connection (its session time zone);
                # asking the session for it costs more than rendering the keys.
                connection = (
                    _connection(session, state.mapper) if needs_zone(declared, dialect) else None
                )
                mapper = state.mapper  # last: a lookup that raised is asked again
            if op is Op.INSERT:
                before, after = None, after_image(state, declared.needed)
            elif op is Op.UPDATE:
                if not changed(state):
                    continue  # after_update fires for dirty instances without net changes
                before, after = update_images(state, declared.needed)
            else:
                before, after = before_image(state, declared.needed), None
            collect_change(level, declared, before, after, dialect=dialect, connection=connection)
        except Exception:  # a hook must never break the application's flush
            log.exception(
                "cachesync: could not collect the keys of a %s of %s; the binlog path "
                "will delete them",
                op.value,
                declared.spec.model,
            )


def _dialect(session: Session, mapper: Mapper[Any]) -> Dialect | None:
    try:
        return session.get_bind(mapper=mapper).dialect
    except Exception:  # unbound session in an odd setup: render keys from Python values
        return None


def _connection(session: Session, mapper: Mapper[Any]) -> Connection | None:
    """The connection this flush wrote with (its session time zone decides TIMESTAMPs)."""
    try:
        return session.connection(bind_arguments={"mapper": mapper})
    except Exception:
        return None


def _before_commit(session: Session, config: HookConfig) -> None:
    if config.outbox is None or session.in_nested_transaction():
        return
    # commit() autoflushes only AFTER this event: flush now so that this
    # transaction's last changes are collected before the outbox row is written.
    session.flush()
    st = _state(session)
    intents = st.stack.pending().intents if st is not None else {}
    if intents:
        write_intents(session, config.outbox, intents)


def _after_commit(session: Session) -> None:
    st = session.info.get(STATE_KEY)
    if not isinstance(st, _SessionState):
        return
    # The committing level is still the current one during after_commit.
    committing = session.get_nested_transaction() or session.get_transaction()
    if committing is not None:
        st.committed.add(committing)


def _after_transaction_end(
    session: Session, transaction: SessionTransaction, config: HookConfig
) -> None:
    if transaction.origin is SessionTransactionOrigin.SUBTRANSACTION:
        return  # flush()'s internal transaction: part of the level around it
    st = session.info.get(STATE_KEY)
    if not isinstance(st, _SessionState):
        return
    committed = transaction in st.committed
    st.committed.discard(transaction)
    if not committed:
        dropped = st.stack.rollback(transaction)
        if dropped:
            log.debug(
                "cachesync: %s rolled back; dropped %d key(s)",
                "savepoint" if transaction.nested else "transaction",
                len(dropped.keys) + len(dropped.intents),
            )
        return
    delivered = st.stack.commit(transaction)
    if not delivered:
        return
    keys = delivered.all_keys()
    try:
        # An AsyncSession commits on the event loop's thread: deliver_soon() then hands
        # the Redis call to a worker thread instead of blocking the loop.
        (config.fast_path or fastpath.fast_path).deliver_soon(keys)
    except Exception:  # deliver() promises not to raise; the application's commit is done
        log.exception("cachesync: fast path failed for %d key(s)", len(keys))


def _after_begin(session: Session, connection: Connection, config: HookConfig) -> None:
    """A transaction of *session* runs on *connection*: its ORM UPDATE/DELETE statements there
    are tracked (:mod:`.bulk`)."""
    bulk.session_began(session, connection, _level_of, config.max_bulk_rows)


def _level_of(session: Session) -> Collected:
    st = _state(session, create=True)
    assert st is not None
    return st.level(session)
