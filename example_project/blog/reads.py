"""Cached reads of the blog, in the two styles cachesync supports.

* :func:`article` uses :class:`cachesync.leases.Leases`: read-through with a
  lease token, so a reader that loaded an old row just before a write can never
  put it back into the cache after cachesync deleted the key.
* :func:`latest` uses Django's cache API (``cache.get_or_set``): fine for data
  where a short-lived stale read is acceptable; ``KEY_FUNCTION = raw_key`` in
  settings makes its Redis key the declared ``articles:latest``.

Both read the Redis that cachesync invalidates (``CACHES["default"]``).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from django.core.cache import cache as django_cache

from cachesync import get_settings
from cachesync.connections import redis_client
from cachesync.leases import Leases

from .models import PUBLISHED, Article


@cache
def leases() -> Leases:
    """One lease helper per process, on cachesync's own Redis client (explicit timeouts)."""
    return Leases(redis_client(get_settings()), ttl=3600)


def _article_dict(a: Article) -> dict[str, Any]:
    return {
        "id": a.pk,
        "title": a.title,
        "slug": a.slug,
        "author": a.author.username,
        "status": a.get_status_display(),
        "tags": sorted(t.name for t in a.tags.all()),
        "updated_at": a.updated_at.isoformat(),
    }


def article(pk: int) -> dict[str, Any] | None:
    """One article as the page shows it, cached under ``article:{pk}``."""

    def load() -> dict[str, Any] | None:
        found = Article.objects.select_related("author").filter(pk=pk).first()
        return _article_dict(found) if found is not None else None

    return leases().cached(f"article:{pk}", load)


def latest(limit: int = 10) -> list[dict[str, Any]]:
    """The front page, cached under ``articles:latest``."""

    def load() -> list[dict[str, Any]]:
        rows = Article.objects.filter(status=PUBLISHED).order_by("-updated_at")[:limit]
        return [{"id": a.pk, "title": a.title, "slug": a.slug} for a in rows]

    return django_cache.get_or_set("articles:latest", load, timeout=3600)  # type: ignore[no-any-return]
