"""Cached reads of the blog, in the styles cachesync supports.

* :func:`article` uses the read API's ``@cached`` on the declared template
  ``article:{id}``: read-through with a lease token, so a reader that loaded an
  old row just before a write can never put it back into the cache after
  cachesync deleted the key, and the key is the one the declaration invalidates
  (a typo in it fails at the first call, not silently). ``Article.cache.get(pk)``
  does the same for the model instance itself.
* :func:`latest` uses Django's cache API (``cache.get_or_set``): fine for data
  where a short-lived stale read is acceptable; ``KEY_FUNCTION = raw_key`` in
  settings makes its Redis key the declared ``articles:latest``.

Both read the Redis that cachesync invalidates (``CACHES["default"]``).
"""

from __future__ import annotations

from typing import Any

from django.core.cache import cache as django_cache

from cachesync.contrib.django import Reads, cached

from .models import PUBLISHED, Article


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


@cached("article:{id}", reads=Reads(ttl=3600))
def article(id: int) -> dict[str, Any] | None:
    """One article as the page shows it, cached under the declared ``article:{id}``."""
    found = Article.objects.select_related("author").filter(pk=id).first()
    return _article_dict(found) if found is not None else None


def latest(limit: int = 10) -> list[dict[str, Any]]:
    """The front page, cached under ``articles:latest``."""

    def load() -> list[dict[str, Any]]:
        rows = Article.objects.filter(status=PUBLISHED).order_by("-updated_at")[:limit]
        return [{"id": a.pk, "title": a.title, "slug": a.slug} for a in rows]

    return django_cache.get_or_set("articles:latest", load, timeout=3600)  # type: ignore[no-any-return]
