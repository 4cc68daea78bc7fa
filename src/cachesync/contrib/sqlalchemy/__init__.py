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

After each outermost commit the keys of the rows it changed are deleted
(best effort, milliseconds); the binlog sidecar deletes them too, so a lost
fast-path delete loses nothing. To record ``invalidates()`` intents
transactionally, create the outbox table and pass it::

    outbox = outbox_table(Base.metadata)
    install(SessionLocal, outbox=outbox)
"""

from ...fastpath import no_sync
from .declare import CacheSyncMixin, register, spec_for, track, unregister
from .hooks import HookConfig, install, installed, uninstall
from .outbox import outbox_table, write_intents

__all__ = [
    "CacheSyncMixin",
    "HookConfig",
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
