"""Declarations that ``manage.py check`` must report (used by settings_bad only)."""

from django.db import models

from cachesync import Sync
from cachesync.contrib.django import CacheSyncModel


class Misspelt(CacheSyncModel, models.Model):
    name = models.CharField(max_length=50)

    __cachesync__ = Sync(keys=["misspelt:{nmae}"])


class Unclosed(CacheSyncModel, models.Model):
    name = models.CharField(max_length=50)

    __cachesync__ = Sync(keys=["unclosed:{name"])


class NoMixin(models.Model):
    name = models.CharField(max_length=50)

    __cachesync__ = Sync(keys=["nomixin:{pk}"])
