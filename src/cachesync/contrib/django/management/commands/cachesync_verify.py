"""``manage.py cachesync_verify``: ``cachesync verify`` with Django's settings and models."""

from __future__ import annotations

from ..base import CliCommand


class Command(CliCommand):
    cli_command = "verify"
    help = "Compare Elasticsearch with the tables (missing, stale, orphan documents); --repair fixes them. Takes every option of `cachesync verify`; settings come from settings.CACHESYNC."
