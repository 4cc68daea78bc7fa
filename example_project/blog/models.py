"""The blog: articles by users, with tags.

What is cached and searchable is declared in :mod:`blog.declarations`, shared
with the SQLAlchemy side (``sqlalchemy_app.py``); users and the article-tag
table, which this app does not own, are registered in ``blog/cachesync.py``.
"""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db import models

from cachesync.contrib.django import CacheSyncModel

from .declarations import ARTICLE, DRAFT, PUBLISHED, TAG


class Tag(CacheSyncModel, models.Model):
    name = models.CharField(max_length=50, unique=True)

    __cachesync__ = TAG

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

    __cachesync__ = ARTICLE

    class Meta:
        db_table = "blog_article"

    def __str__(self) -> str:
        return self.title
