"""``manage.py cachesync_relay``: ``cachesync relay`` with Django's settings and models."""

from __future__ import annotations

from ..base import CliCommand


class Command(CliCommand):
    cli_command = "relay"
    help = (
        "Relay the outbox table: apply intents and parked failures (the change source on "
        "databases without a binlog). Takes every option of `cachesync relay`; settings come "
        "from settings.CACHESYNC."
    )
