"""The blog: articles by users, with tags. What is cached, and what is searchable, is declared here.

Cache keys (deleted after every committed change, by the fast path and by the
binlog sidecar):

* ``article:{pk}`` and ``article:by-slug:{slug}``: one article, as the views cache it;
* ``user:{author}:articles`` and ``articles:latest``: lists that no single row
  names, declared with ``invalidates``;
* users' keys are declared in ``blog/cachesync.py`` with ``register()``, since
  this app does not own ``auth.User``.

Search: published articles are documents of the ``blog-articles`` index; an
article that goes back to draft leaves the index.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib.auth.models import User
from django.db import models

from cachesync import Projection, Sync
from cachesync.contrib.django import CacheSyncModel

DRAFT, PUBLISHED = 0, 1


def article_document(row: Any) -> dict[str, Any]:
    """The search document of an article row (keyed by field name on every path)."""
    return {
        "title": row["title"],
        "body": row["body"],
        "slug": row["slug"],
        "author_id": row["author"],
        "updated_at": row["updated_at"],
    }


def article_lists(before: Any, after: Any) -> Iterable[str]:
    """List caches an article change makes stale: its author's list(s) and the front page."""
    for row in (before, after):
        if row is not None:
            yield f"user:{row['author']}:articles"
    yield "articles:latest"


class Tag(CacheSyncModel, models.Model):
    name = models.CharField(max_length=50, unique=True)

    __cachesync__ = Sync(keys=["tag:{name}"])

    class Meta:
        db_table = "blog_tag"

    def __str__(self) -> str:
        return self.name


class Article(CacheSyncModel, models.Model):
    STATUS = ((DRAFT, "draft"), (PUBLISHED, "published"))

    title = models.CharField(max_length=200)
    slug = models.SlugField(max_length=200, unique=True, db_column="url_slug")
    author = models.ForeignKey(User, on_delete=models.CASCADE, related_name="articles")
    body = models.TextField(blank=True)
    status = models.SmallIntegerField(choices=STATUS, default=DRAFT)
    views = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)
    tags = models.ManyToManyField(Tag, blank=True, related_name="articles")

    __cachesync__ = Sync(
        keys=["article:{pk}", "article:by-slug:{slug}"],
        search=Projection(
            index="blog-articles",
            to_document=article_document,
            when=lambda row: row["status"] == PUBLISHED,
        ),
        invalidates=article_lists,
    )

    class Meta:
        db_table = "blog_article"

    def __str__(self) -> str:
        return self.title
