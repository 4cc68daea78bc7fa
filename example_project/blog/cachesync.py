"""Declarations for models this app does not own; discovered by ``cachesync.contrib.django``.

``auth.User`` comes from Django, and the article-tag table is created by the
many-to-many field, so neither can carry ``__cachesync__``.
"""

from django.contrib.auth.models import User

from cachesync.contrib.django import register

from .declarations import ARTICLE_TAG, USER
from .models import Article

register(User, USER)
register(Article.tags.through, ARTICLE_TAG)
