"""``manage.py cachesync_dlq``: ``cachesync dlq`` with Django's settings and models."""

from __future__ import annotations

from ..base import CliCommand


class Command(CliCommand):
    cli_command = "dlq"
    help = "Inspect dead letters and redrive them through the retry path. Takes every option of `cachesync dlq`; settings come from settings.CACHESYNC."
