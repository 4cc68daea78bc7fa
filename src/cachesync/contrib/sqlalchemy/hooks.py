"""Session hooks: collect keys at flush, delete them after the OUTERMOST commit.

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
* ``do_orm_execute`` covers ORM ``update()``/``delete()`` statements (:mod:`.bulk`).

Inside :func:`cachesync.no_sync` nothing is collected.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, event
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Connection, Dialect, Result
from sqlalchemy.orm import (
    InstanceState,
    Mapper,
    ORMExecuteState,
    Session,
    SessionTransaction,
    SessionTransactionOrigin,
    scoped_session,
    sessionmaker,
)
from sqlalchemy.orm.attributes import instance_state

from ... import fastpath
from ...changes import Op
from ...errors import ConfigurationError
from ...fastpath import FastPath, sync_enabled
from ...transactions import Collected, LevelStack
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

__all__ = ["HookConfig", "install", "installed", "uninstall"]

log = logging.getLogger("cachesync.contrib.sqlalchemy")

#: Where a session keeps its :class:`_SessionState` (``session.info`` dies with the session).
STATE_KEY = "cachesync.sqlalchemy"

#: A sync target, or an asyncio one (AsyncSession class/instance, async_sessionmaker, ...).
SessionTarget = type[Session] | sessionmaker[Any] | scoped_session[Any] | Session | Any


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


# ---------------------------------------------------------------------------------------------
# Which installation handles a session
# ---------------------------------------------------------------------------------------------

_lock = threading.Lock()
#: Installed target (a Session class or a Session instance) -> its configuration.
_configs: weakref.WeakKeyDictionary[Any, HookConfig] = weakref.WeakKeyDictionary()
#: Installed target -> the listeners it listens with now (see _sync_listeners).
_listeners: weakref.WeakKeyDictionary[Any, list[tuple[str, Callable[..., Any]]]] = (
    weakref.WeakKeyDictionary()
)
#: Installed target -> every listener made for it, listened to or not.
_all_listeners: weakref.WeakKeyDictionary[Any, list[tuple[str, Callable[..., Any]]]] = (
    weakref.WeakKeyDictionary()
)
_mapper_events_installed = False
#: Bumped by install() and uninstall(): a session's cached owner (below) is then stale.
_generation = 0
#: Where a session caches ``(generation, weakref to its owner, the owner's HookConfig)``:
#: every listener call asks, several times per commit, and the lookup walked the MRO
#: through weak dictionaries each time.
OWNER_KEY = "cachesync.sqlalchemy.owner"


def _key_of(target: Any) -> Session | type[Session]:
    if isinstance(target, scoped_session):
        target = target.session_factory
    if isinstance(target, sessionmaker):
        return target.class_  # what event.listen(sessionmaker, ...) listens on, too
    if isinstance(target, Session) or (isinstance(target, type) and issubclass(target, Session)):
        return target
    if type(target).__module__.startswith("sqlalchemy.ext.asyncio") or (
        isinstance(target, type) and target.__module__.startswith("sqlalchemy.ext.asyncio")
    ):
        from .aio import sync_target

        return sync_target(target)
    raise ConfigurationError(
        "cachesync.contrib.sqlalchemy.install() expects a Session subclass, a sessionmaker, "
        "a scoped_session, a Session, an AsyncSession (class or instance), an "
        f"async_sessionmaker or an async_scoped_session, got {target!r}",
        setting="install",
    )


def _owner(session: Session) -> Any:
    """The most specific installed target covering *session* (itself, else its nearest class).

    Listeners registered on ``Session`` also fire for sessions of an installed
    subclass; each handler runs only for its owner so nothing is collected twice.
    """
    if session in _configs:
        return session
    return next((c for c in type(session).__mro__ if c in _configs), None)


def _config_for(key_ref: weakref.ref[Any], session: Session) -> HookConfig | None:
    """*key*'s configuration if *key* (the listener's target) is *session*'s owner, else None."""
    key = key_ref()
    if key is None:
        return None
    info = session.info
    cached = info.get(OWNER_KEY)
    if cached is None or cached[0] != _generation:
        generation = _generation  # read first: an install() meanwhile makes this entry stale
        with _lock:
            owner = _owner(session)
            config = _configs.get(owner) if owner is not None else None
        # Weakly: the owner may be the session itself, which its info must not keep alive.
        cached = info[OWNER_KEY] = (generation, None if owner is None else weakref.ref(owner), config)
    owner_ref = cached[1]
    return cached[2] if owner_ref is not None and owner_ref() is key else None


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


def _install_mapper_events() -> None:
    global _mapper_events_installed
    if not _mapper_events_installed:
        event.listen(Mapper, "after_insert", _after_insert)
        event.listen(Mapper, "after_update", _after_update)
        event.listen(Mapper, "after_delete", _after_delete)
        _mapper_events_installed = True


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
    dialects: dict[Any, Dialect | None] = {}
    connections: dict[Any, Connection | None] = {}
    for op, state in flushed:
        declared = declared_for(state.class_)
        if declared is None or not declared.needed:
            continue
        try:
            if state.mapper not in dialects:
                dialect = dialects[state.mapper] = _dialect(session, state.mapper)
                # Only a TIMESTAMP column needs the connection (its session time zone);
                # asking the session for it costs more than rendering the keys.
                connections[state.mapper] = (
                    _connection(session, state.mapper) if needs_zone(declared, dialect) else None
                )
            if op is Op.INSERT:
                before, after = None, after_image(state, declared.needed)
            elif op is Op.UPDATE:
                if not changed(state):
                    continue  # after_update fires for dirty instances without net changes
                before, after = update_images(state, declared.needed)
            else:
                before, after = before_image(state, declared.needed), None
            collect_change(
                level,
                declared,
                before,
                after,
                dialect=dialects[state.mapper],
                connection=connections[state.mapper],
            )
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


def _do_orm_execute(state: ORMExecuteState, config: HookConfig) -> Result[Any] | None:
    if not (state.is_update or state.is_delete) or not sync_enabled():
        return None
    from .bulk import execute_tracked

    st = _state(state.session, create=True)
    assert st is not None
    return execute_tracked(state, st.level, config.max_bulk_rows)


def _make_listeners(key: Any) -> list[tuple[str, Callable[..., Any]]]:
    """Session listeners bound (weakly) to one installed target."""
    ref = weakref.ref(key)

    def before_flush(session: Session, flush_context: Any, instances: Any) -> None:
        if _config_for(ref, session) is not None:
            _before_flush(session)

    def after_flush(session: Session, flush_context: Any) -> None:
        if _config_for(ref, session) is not None:
            _after_flush(session)

    def before_commit(session: Session) -> None:
        config = _config_for(ref, session)
        if config is not None:
            _before_commit(session, config)

    def after_commit(session: Session) -> None:
        if _config_for(ref, session) is not None:
            _after_commit(session)

    def after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
        if transaction.origin is SessionTransactionOrigin.SUBTRANSACTION:
            return  # flush()'s internal transaction ends in every commit: nothing to look up
        config = _config_for(ref, session)
        if config is not None:
            _after_transaction_end(session, transaction, config)

    def do_orm_execute(orm_execute_state: ORMExecuteState) -> Result[Any] | None:
        if not (orm_execute_state.is_update or orm_execute_state.is_delete):
            return None  # a SELECT (every lazy load and refresh, too): nothing to look up
        config = _config_for(ref, orm_execute_state.session)
        if config is None:
            return None
        return _do_orm_execute(orm_execute_state, config)

    return [
        ("before_flush", before_flush),
        ("after_flush", after_flush),
        ("before_commit", before_commit),
        ("after_commit", after_commit),
        ("after_transaction_end", after_transaction_end),
        ("do_orm_execute", do_orm_execute),
    ]


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def install(
    target: SessionTarget = Session,
    *,
    outbox: Table | None = None,
    fast_path: FastPath | None = None,
    max_bulk_rows: int = 1000,
) -> HookConfig:
    """Hook cachesync into the sessions of *target*; idempotent.

    *target* is a ``Session`` subclass (default: every ``Session``), a
    ``sessionmaker``, a ``scoped_session`` or one ``Session``; for asyncio, an
    ``AsyncSession`` (class or instance), an ``async_sessionmaker`` (which gets a
    ``sync_session_class`` of its own when it has none) or an
    ``async_scoped_session``. After an asyncio commit the keys are deleted on a
    worker thread (:meth:`cachesync.fastpath.FastPath.deliver_soon`), so the event
    loop never waits for Redis. Installing the
    same target again replaces its options and adds no second set of listeners.
    When a session is covered by several installations (``Session`` and a
    ``sessionmaker`` of it), the most specific one handles it, once.

    *outbox*: a table from :func:`outbox_table`; every transaction that collected
    ``invalidates()`` intents then writes one outbox row, inside the transaction,
    just before its outermost commit. Without it no outbox row is written. The
    table must be bound to the same database as the business tables, or the row
    is not atomic with them; a failing outbox insert fails the commit.
    *fast_path*: the :class:`FastPath` that deletes keys after commit (tests,
    several Redis); default the process-wide one built from the settings.
    *max_bulk_rows*: ORM ``update()``/``delete()`` statements touching more rows
    leave their keys to the binlog path instead of pre-reading them.

    A session joined to an outer transaction (``Session(bind=connection)``, the
    rollback-per-test pattern) treats its own commit as the outermost one: keys
    may be deleted for a change the outer transaction later rolls back. That
    costs a cache miss, never a stale value.
    """
    if max_bulk_rows < 0:
        raise ConfigurationError("max_bulk_rows must be >= 0", setting="max_bulk_rows")
    if outbox is not None and not isinstance(outbox, Table):
        raise ConfigurationError(
            f"outbox= expects a sqlalchemy Table (see outbox_table()), got {outbox!r}",
            setting="outbox",
        )
    key = _key_of(target)
    config = HookConfig(outbox=outbox, fast_path=fast_path, max_bulk_rows=max_bulk_rows)
    global _generation
    with _lock:
        _install_mapper_events()
        _configs[key] = config
        _generation += 1
        if key not in _listeners:
            _listeners[key] = []
            _all_listeners[key] = _make_listeners(key)
        _sync_listeners(key, config)
    return config


def _sync_listeners(key: Any, config: HookConfig) -> None:
    """Listen with exactly the listeners *config* needs (under ``_lock``).

    ``before_commit`` only writes the outbox row: without an outbox it is not
    listened to at all, so a commit pays no dispatch and no owner lookup for it.
    Installing again with or without an outbox adds or removes it.
    """
    wanted = [
        (name, fn)
        for name, fn in _all_listeners[key]
        if name != "before_commit" or config.outbox is not None
    ]
    registered = _listeners[key]
    for name, fn in registered:
        if (name, fn) not in wanted:
            event.remove(key, name, fn)
    for name, fn in wanted:
        if (name, fn) not in registered:
            event.listen(key, name, fn)
    _listeners[key] = wanted


def uninstall(target: SessionTarget = Session) -> None:
    """Remove what :func:`install` added for *target* (tests, reconfiguration)."""
    key = _key_of(target)
    global _generation
    with _lock:
        _configs.pop(key, None)
        _generation += 1
        for name, fn in _listeners.pop(key, []):
            event.remove(key, name, fn)
        _all_listeners.pop(key, None)


def installed(target: SessionTarget = Session) -> HookConfig | None:
    """The configuration installed for exactly *target*, or None."""
    return _configs.get(_key_of(target))
