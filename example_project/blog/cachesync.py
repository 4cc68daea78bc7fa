"""Declarations for models this app does not own; discovered by ``cachesync.contrib.django``.

``auth.User`` comes from Django, and the article-tag table is created by the
many-to-many field, so neither can carry ``__cachesync__``.
"""

from django.contrib.auth.models import User

from cachesync import Projection
from cachesync.contrib.django import register

from .models import Article

register(
    User,
    keys=["user:{pk}", "user:by-name:{username}"],
    search=Projection(
        index="blog-users",
        fields=["username", "first_name", "last_name"],
        when=lambda row: bool(row["is_active"]),
    ),
)

# Tags are part of the cached article: adding or removing one invalidates it.
register(Article.tags.through, keys=["article:{article}"])
