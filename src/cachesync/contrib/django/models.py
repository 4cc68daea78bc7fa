"""The outbox and checkpoint tables as Django models, for ``migrate``, the admin and queries.

The tables are created by migration ``0001`` with the very DDL that the rest of
cachesync uses (:func:`cachesync.outbox.schema.create_table_sql` and
:data:`cachesync.binlog.checkpoint.CHECKPOINT_TABLE_SQL`), not by Django's
schema editor, so that a SQLAlchemy application, the standalone sidecar and a
Django project can share one database and find the same columns, types,
defaults and index. ``CREATE TABLE IF NOT EXISTS`` makes the migration a no-op
where another integration created them first. These models only describe the
tables to the ORM; cachesync itself writes them with plain SQL.
"""

from __future__ import annotations

from typing import Any

from django.db import models
from django.utils import timezone

from ...outbox import schema

__all__ = ["Checkpoint", "Outbox"]

CHECKPOINT_TABLE = "cachesync_checkpoint"


class Outbox(models.Model):  # type: ignore[misc]
    """One outbox row: a JSON array of actions (:mod:`cachesync.codec`) and its delivery state."""

    KINDS = ((schema.KIND_INTENT, "intent"), (schema.KIND_FAILED, "failed"))
    STATES = (
        (schema.STATE_PENDING, "pending"),
        (schema.STATE_DONE, "done"),
        (schema.STATE_DEAD, "dead"),
    )

    id = models.BigAutoField(primary_key=True)
    created_at = models.DateTimeField(default=timezone.now)
    kind = models.CharField(max_length=16, choices=KINDS)
    state = models.CharField(max_length=16, choices=STATES, default=schema.STATE_PENDING)
    payload = models.TextField()
    attempts = models.IntegerField(default=0)
    available_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(null=True, blank=True)

    class Meta:
        db_table = schema.OUTBOX_TABLE
        indexes = [models.Index(fields=["state", "id"], name="cachesync_outbox_state_id")]
        verbose_name = "outbox row"

    def __str__(self) -> str:
        return f"outbox #{self.id} {self.kind} {self.state}"

    def actions(self) -> list[Any]:
        """The decoded actions of this row."""
        from ...codec import decode_actions

        return decode_actions(self.payload)


class Checkpoint(models.Model):  # type: ignore[misc]
    """The last fully handled source position of one sync pipeline (``Settings.name``)."""

    name = models.CharField(max_length=191, primary_key=True)
    position = models.CharField(max_length=255)
    commit_time = models.FloatField(null=True, blank=True)
    updated_at = models.DateTimeField()

    class Meta:
        db_table = CHECKPOINT_TABLE

    def __str__(self) -> str:
        return f"{self.name} @ {self.position}"
