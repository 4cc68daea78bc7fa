"""asyncio targets of :func:`.installation.install`: the synchronous session an ``AsyncSession`` runs on.

An ``AsyncSession`` drives a plain :class:`~sqlalchemy.orm.Session` inside a
greenlet, and fires the same events on it; the hooks listen there. The
after-commit delete then runs on the event loop's thread, which is why
:meth:`cachesync.fastpath.FastPath.deliver_soon` hands it to a worker thread.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from ...errors import ConfigurationError

__all__ = ["AsyncCacheSyncSession", "sync_target"]


class AsyncCacheSyncSession(Session):
    """The ``sync_session_class`` :func:`install` gives an ``async_sessionmaker`` that had none.

    An ``AsyncSession`` runs a plain :class:`Session` underneath; the hooks listen
    on that one. A subclass of its own keeps the hooks to the sessions of the
    installed maker, as installing a ``sessionmaker`` does.
    """


def sync_target(target: Any) -> Session | type[Session]:
    """The synchronous session (class) an asyncio target runs on: where the hooks listen."""
    from sqlalchemy.ext.asyncio import AsyncSession, async_scoped_session, async_sessionmaker

    if isinstance(target, async_scoped_session):
        target = target.session_factory
    if isinstance(target, AsyncSession):
        return target.sync_session
    if isinstance(target, type) and issubclass(target, AsyncSession):
        return target.sync_session_class
    if isinstance(target, async_sessionmaker):
        sync_class = target.kw.get("sync_session_class")
        if sync_class is None:
            sync_class = type(
                "AsyncCacheSyncSession", (AsyncCacheSyncSession,), {"__module__": __name__}
            )
            target.configure(sync_session_class=sync_class)
        if not (isinstance(sync_class, type) and issubclass(sync_class, Session)):
            raise ConfigurationError(
                f"async_sessionmaker(sync_session_class={sync_class!r}) is not a Session class",
                setting="install",
            )
        return sync_class
    raise ConfigurationError(
        f"install() cannot hook into {target!r}; give it an AsyncSession, an "
        "async_sessionmaker or an async_scoped_session",
        setting="install",
    )
