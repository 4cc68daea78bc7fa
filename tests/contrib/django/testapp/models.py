"""Models of the Django test suite: db_column, foreign keys, m2m, proxy, multi-table inheritance."""

from __future__ import annotations

import uuid

from django.contrib.auth.models import User
from django.db import models

from cachesync import Projection, Sync
from cachesync.contrib.django import CacheSyncModel


def _author_lists(before, after):  # type: ignore[no-untyped-def]
    return [f"author:{row['author_id']}:articles" for row in (before, after) if row is not None]


class Tag(CacheSyncModel, models.Model):
    name = models.CharField(max_length=50, unique=True)

    __cachesync__ = Sync(keys=["tag:{pk}", "tag:by-name:{name}"])


class Article(CacheSyncModel, models.Model):
    title = models.CharField(max_length=200)
    slug = models.CharField(max_length=200, db_column="url_slug", unique=True)
    author = models.ForeignKey(User, on_delete=models.CASCADE, related_name="articles")
    status = models.SmallIntegerField(default=0)
    tags = models.ManyToManyField(Tag, blank=True, related_name="articles")

    __cachesync__ = Sync(
        keys=["article:{pk}", "article:by-slug:{slug}", "author:{author}:article:{id}"],
        search=Projection(
            index="csdj-articles", fields=["title", "author"], when=lambda r: r["status"] == 1
        ),
        invalidates=_author_lists,
    )


class PublishedArticle(Article):
    """A proxy: saves through it are synced as Article's."""

    class Meta:
        proxy = True


class Place(CacheSyncModel, models.Model):
    name = models.CharField(max_length=100)

    __cachesync__ = Sync(keys=["place:{pk}", "place:by-name:{name}"])


class Restaurant(Place):
    """Multi-table child: its saves write Place's table too, so Place's keys go."""

    cuisine = models.CharField(max_length=50)


class Typed(CacheSyncModel, models.Model):
    """Every field type whose value lands in a key, for the ORM-vs-binlog property test."""

    code = models.UUIDField(default=uuid.uuid4, unique=True)
    flag = models.BooleanField(default=False)
    amount = models.DecimalField(max_digits=10, decimal_places=2)
    day = models.DateField()
    at = models.DateTimeField(null=True)
    label = models.CharField(max_length=100, db_column="label_text")
    owner = models.ForeignKey(User, null=True, on_delete=models.SET_NULL, related_name="+")

    __cachesync__ = Sync(
        keys=[
            "typed:{pk}",
            "typed:code:{code}",
            "typed:{id}:flag:{flag}",
            "typed:{id}:amount:{amount}",
            "typed:day:{day}",
            "typed:at:{at}",
            "typed:label:{label}",
            "typed:owner:{owner}",
            "typed:owner-id:{owner_id}",
        ]
    )


class Plain(models.Model):
    """Not synced: must not get any receiver (keeps Django's fast delete)."""

    name = models.CharField(max_length=50)
