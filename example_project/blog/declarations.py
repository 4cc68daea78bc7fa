"""What the blog keeps in sync, written once for both ORMs.

``blog/models.py`` (Django) and ``sqlalchemy_app.py`` (SQLAlchemy) put these very
objects on their models: templates name attributes both ORMs call the same
(``id``, ``slug`` whose column is ``url_slug``, the foreign key's ``author_id``),
so either application, and the binlog sidecar, delete the same keys for the
same row. This module imports neither ORM.

* ``article:{id}``, ``article:by-slug:{slug}``: one article, as the views cache it;
* ``user:{author_id}:articles`` and ``articles:latest``: lists that no row
  names, declared with ``invalidates``;
* published articles are documents of ``blog-articles``; an article that goes
  back to draft leaves the index; active users are documents of ``blog-users``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cachesync import Projection, Sync

DRAFT, PUBLISHED = 0, 1


def article_document(row: Any) -> dict[str, Any]:
    """The search document of an article row."""
    return {
        "title": row["title"],
        "body": row["body"],
        "slug": row["slug"],
        "author_id": row["author_id"],
        "updated_at": row["updated_at"],
    }


def article_lists(before: Any, after: Any) -> Iterable[str]:
    """List caches an article change makes stale: its author's list(s) and the front page."""
    for row in (before, after):
        if row is not None:
            yield f"user:{row['author_id']}:articles"
    yield "articles:latest"


ARTICLE = Sync(
    keys=["article:{id}", "article:by-slug:{slug}"],
    search=Projection(
        index="blog-articles",
        to_document=article_document,
        when=lambda row: row["status"] == PUBLISHED,
    ),
    invalidates=article_lists,
)

TAG = Sync(keys=["tag:{name}"])

#: The article-tag link table: tags are part of the cached article.
ARTICLE_TAG = Sync(keys=["article:{article_id}"])

USER = Sync(
    keys=["user:{id}", "user:by-name:{username}"],
    search=Projection(
        index="blog-users",
        fields=["username", "first_name", "last_name"],
        when=lambda row: bool(row["is_active"]),
    ),
)
