"""Django integration: ``INSTALLED_APPS += ["cachesync.contrib.django"]``.

Declare on models you own with the :class:`CacheSyncModel` mixin::

    class Article(CacheSyncModel, models.Model):
        ...
        __cachesync__ = Sync(
            keys=["article:{pk}", "article:by-slug:{slug}"],
            search=Projection(index="articles", fields=["title", "author"],
                              when=lambda row: row["status"] == 1),
        )

read through them with ``Article.cache.get(pk)`` (:mod:`.reads`), and declare
with :func:`register` for models you don't (in an app's ``cachesync.py``,
discovered at start-up)::

    register(User, keys=["user:{pk}", "user:by-name:{username}"])

Settings live in ``settings.CACHESYNC`` under the names of
:class:`cachesync.Settings` in upper case (:mod:`.conf`); ``manage.py check``
validates declarations and settings (:mod:`.checks`); the after-commit fast
path is in :mod:`.hooks`; ``manage.py cachesync_listen|retry|relay|reindex|status|dlq``
run the standalone CLI with Django's settings and models.

Importing this package does not need configured settings or a ready app
registry, so a ``models.py`` can import the mixin.
"""

from collections.abc import Callable
from typing import Any

from ...fastpath import no_sync
from ...reads import Reads, ReadStore
from ...reads import cached as _cached
from .conf import raw_key
from .declarations import CacheSyncModel, register, state, unregister


def cached(
    template: str, *, reads: Reads | None = None, store: ReadStore | None = None
) -> Callable[[Any], Any]:
    """:func:`cachesync.reads.cached` on the registry the Django declarations resolve into."""
    return _cached(template, reads=reads, registry=state.registry, store=store)


def cache_for(model: object, reads: Reads | None = None) -> object:
    """The read API of a declared model (``Model.cache`` on the mixin); see :mod:`.reads`."""
    from .reads import cache_for as _cache_for

    return _cache_for(model, reads)


__all__ = [
    "CacheSyncModel",
    "Reads",
    "cache_for",
    "cached",
    "no_sync",
    "raw_key",
    "register",
    "unregister",
]
