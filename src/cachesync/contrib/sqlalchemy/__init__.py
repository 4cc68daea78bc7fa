"""SQLAlchemy integration: declarations on models, session hooks, the outbox table.

::

    from cachesync import Sync
    from cachesync.contrib.sqlalchemy import CacheSyncMixin, install

    class User(CacheSyncMixin, Base):
        __tablename__ = "users"
        id = mapped_column(Integer, primary_key=True)
        username = mapped_column("user_name", String(64))
        __cachesync__ = Sync(keys=["user:{id}", "user:by-name:{username}"])

    install(SessionLocal)          # a sessionmaker, a Session subclass, or Session itself
    user = User.cache.get(1, session=SessionLocal)   # read-through, leases, same keys

After each outermost commit the keys of the rows it changed are deleted
(best effort, milliseconds); the binlog sidecar deletes them too, so a lost
fast-path delete loses nothing. To record ``invalidates()`` intents
transactionally, create the outbox table and pass it::

    outbox = outbox_table(Base.metadata)
    install(SessionLocal, outbox=outbox)
"""

from ...fastpath import no_sync
from ...reads import Reads, cached
from .declare import CacheSyncMixin, register, spec_for, track, unregister
from .installation import HookConfig, install, installed, uninstall
from .outbox import outbox_table, write_intents
from .reads import CacheDescriptor, ModelCache, cache_for

CacheSyncMixin.cache = CacheDescriptor()  # type: ignore[misc]

__all__ = [
    "CacheSyncMixin",
    "HookConfig",
    "ModelCache",
    "Reads",
    "cache_for",
    "cached",
    "install",
    "installed",
    "no_sync",
    "outbox_table",
    "register",
    "spec_for",
    "track",
    "uninstall",
    "unregister",
    "write_intents",
]
