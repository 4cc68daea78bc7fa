"""Installing the session hooks: which sessions they run for, and with what.

:func:`install` binds one set of session listeners to a target (a ``Session``
class, a ``sessionmaker``, one ``Session``, or an asyncio one) and records its
:class:`~.hooks.HookConfig`; a session covered by several installations is
handled by the most specific one, once (:func:`_config_for`, cached per session).
What the listeners do is :mod:`.hooks`.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

from sqlalchemy import Table, event
from sqlalchemy.orm import (
    Session,
    SessionTransaction,
    SessionTransactionOrigin,
    scoped_session,
    sessionmaker,
)

from ...errors import ConfigurationError
from ...fastpath import FastPath
from .hooks import (
    HookConfig,
    _after_begin,
    _after_commit,
    _after_flush,
    _after_transaction_end,
    _before_commit,
    _before_flush,
    _install_global_events,
)

__all__ = ["HookConfig", "install", "installed", "uninstall"]

#: A sync target, or an asyncio one (AsyncSession class/instance, async_sessionmaker, ...).
SessionTarget = type[Session] | sessionmaker[Any] | scoped_session[Any] | Session | Any

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
#: Installed target -> the weak reference its listeners hold (what a session's cache names).
_refs: weakref.WeakKeyDictionary[Any, weakref.ref[Any]] = weakref.WeakKeyDictionary()
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
    """The configuration of the listener's target (*key_ref*) if it is *session*'s owner, else None.

    Every listener asks, five times per commit: the cached answer is checked
    with two comparisons, and the owner is compared by its listeners' own weak
    reference (:data:`_refs`), never dereferenced.
    """
    cached = session.info.get(OWNER_KEY)
    if cached is None or cached[0] != _generation:
        cached = _cache_owner(session)
    return cached[2] if cached[1] is key_ref else None


def _cache_owner(session: Session) -> tuple[int, weakref.ref[Any] | None, HookConfig | None]:
    generation = _generation  # read first: an install() meanwhile makes this entry stale
    with _lock:
        owner = _owner(session)
        config = _configs.get(owner) if owner is not None else None
        owner_ref = _refs.get(owner) if owner is not None else None
    # Weakly: the owner may be the session itself, which its info must not keep alive.
    cached = session.info[OWNER_KEY] = (generation, owner_ref, config)
    return cached


def _make_listeners(key: Any) -> list[tuple[str, Callable[..., Any]]]:
    """Session listeners bound (weakly) to one installed target."""
    ref = _refs[key] = weakref.ref(key)

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

    def after_begin(session: Session, transaction: SessionTransaction, connection: Any) -> None:
        config = _config_for(ref, session)
        if config is not None:
            _after_begin(session, connection, config)

    return [
        ("before_flush", before_flush),
        ("after_flush", after_flush),
        ("before_commit", before_commit),
        ("after_commit", after_commit),
        ("after_transaction_end", after_transaction_end),
        ("after_begin", after_begin),
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
        _install_global_events()
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
        _refs.pop(key, None)


def installed(target: SessionTarget = Session) -> HookConfig | None:
    """The configuration installed for exactly *target*, or None."""
    return _configs.get(_key_of(target))
