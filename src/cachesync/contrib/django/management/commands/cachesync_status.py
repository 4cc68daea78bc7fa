"""``manage.py cachesync_status``: ``cachesync status`` with Django's settings and models."""

from __future__ import annotations

from ..base import CliCommand


class Command(CliCommand):
    cli_command = "status"
    help = "Print the checkpoint, server position, lag, outbox backlog and dead letters. Takes every option of `cachesync status`; settings come from settings.CACHESYNC."
