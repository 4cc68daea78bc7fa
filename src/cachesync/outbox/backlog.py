"""The outbox table's backlog, for the ``outbox_backlog`` and ``retry_backlog`` gauges.

Gauges are read on the metrics server's thread at every scrape; a ``COUNT``
per scrape per gauge on the application's database would be wasteful and, with
the database slow, would slow the scrape. :class:`OutboxBacklog` counts pending
rows per kind with one query at most every ``max_age`` seconds, on its own
engine, and reads NaN while the database cannot answer.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

from . import schema
from .store import OutboxStore

__all__ = ["OutboxBacklog"]

log = logging.getLogger("cachesync.outbox")


class OutboxBacklog:
    """Pending outbox rows, all kinds (:meth:`pending`) and parked failures (:meth:`failed`)."""

    def __init__(self, store: OutboxStore, *, max_age: float = 5.0) -> None:
        self.store = store
        self.max_age = max_age
        self._lock = threading.Lock()
        self._at = -math.inf
        self._counts: dict[str, float] = {}

    @classmethod
    def from_url(cls, url: str) -> OutboxBacklog:
        return cls(OutboxStore.from_url(url, timeout=3.0))

    def _read(self) -> dict[str, float]:
        with self._lock:
            if time.monotonic() - self._at < self.max_age:
                return self._counts
            self._at = time.monotonic()
            try:
                self._counts = self._count()
            except Exception as exc:  # no table yet, database down: unknown, not zero
                log.debug("cachesync: outbox backlog unknown: %s", exc)
                self._counts = {}
            return self._counts

    def _count(self) -> dict[str, float]:
        import sqlalchemy as sa

        t: Any = self.store.table
        with self.store.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.c.kind, sa.func.count())
                .where(t.c.state == schema.STATE_PENDING)
                .group_by(t.c.kind)
            ).all()
        counts = {str(kind): float(n) for kind, n in rows}
        counts["*"] = sum(counts.values())
        return counts

    def pending(self) -> float:
        """Pending rows of every kind (intents and parked failures); NaN when unknown."""
        return self._read().get("*", math.nan)

    def failed(self) -> float:
        """Pending parked failures: the database part of the retry path; NaN when unknown."""
        counts = self._read()
        return counts.get(schema.KIND_FAILED, 0.0) if counts else math.nan
