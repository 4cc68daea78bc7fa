"""``manage.py cachesync_reindex``: ``cachesync reindex`` with Django's settings and models."""

from __future__ import annotations

from ..base import CliCommand


class Command(CliCommand):
    cli_command = "reindex"
    help = "Rebuild an Elasticsearch index from its table (safe while the sidecar runs). Takes every option of `cachesync reindex`; settings come from settings.CACHESYNC."
