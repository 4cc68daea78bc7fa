"""``manage.py cachesync_listen``: ``cachesync listen`` with Django's settings and models."""

from __future__ import annotations

from ..base import CliCommand


class Command(CliCommand):
    cli_command = "listen"
    help = "Run the binlog sidecar: delete keys and update Elasticsearch for every committed change (SIGTERM stops after the current batch). Takes every option of `cachesync listen`; settings come from settings.CACHESYNC."
