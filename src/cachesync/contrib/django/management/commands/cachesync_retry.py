"""``manage.py cachesync_retry``: ``cachesync retry`` with Django's settings and models."""

from __future__ import annotations

from ..base import CliCommand


class Command(CliCommand):
    cli_command = "retry"
    help = "Run the Kafka retry consumer and the outbox relay. Takes every option of `cachesync retry`; settings come from settings.CACHESYNC."
