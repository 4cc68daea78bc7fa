"""How a streaming sidecar reports on itself: honest lag, readiness, latency, status.

A mixin of :class:`~cachesync.binlog.sidecar.Sidecar`, kept apart from the loop
it observes. Lag is measured against what the reader has seen (transactions of
any table, and the server's heartbeats while idle), never against the
checkpoint's own writes, and "applied" comes from the lanes' ledger.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence

from .. import metrics
from ..changes import RowChange
from ..errors import TransientError, redact_url
from ..registry import Registry, TableSpec
from .checkpoint import CheckpointStore
from .lanes import Lanes
from .leader import LeaderLock
from .source import BinlogSource
from .status import SidecarReport

__all__ = ["Reporting"]

log = logging.getLogger("cachesync.sidecar")


def _writes_to(spec: TableSpec, sink: str) -> bool:
    """Whether changes of *spec*'s table lead to actions on *sink* (for the latency metric)."""
    if sink == "redis":
        return bool(spec.key_templates or spec.invalidates)
    return bool(spec.projections)


class Reporting:
    """Lag, readiness, the latency histogram and the status record of a sidecar."""

    # Provided by the sidecar.
    name: str
    registry: Registry
    store: CheckpointStore
    lock: LeaderLock
    leading: threading.Event
    #: Wall time before which every committed change is applied; ``None`` while not leading.
    applied_through: float | None
    _reported: float
    _trouble: str | None

    def lag_seconds(self) -> float:
        """Seconds since the newest moment up to which every committed change was applied.

        Measured against what the reader has seen (transactions of any table, and
        the server's heartbeats while idle), never against the checkpoint's own
        writes: about 0 while idle or when only other tables change, growing while
        a batch is stuck or the reader falls behind. 0 for a standby.
        """
        through = self.applied_through
        if not self.leading.is_set() or through is None:
            return 0.0
        return max(0.0, time.time() - through)

    def ready(self, max_lag: float) -> tuple[bool, str]:
        """``/readyz``: a leader with lag under *max_lag*, or a standby (its loop is alive)."""
        if not self.leading.is_set():
            trouble = self._trouble
            if trouble is not None:
                return False, f"not streaming, retrying: {redact_url(trouble)}"
            return True, f"standby for pipeline {self.name!r} (lock {self.lock.name})"
        lag = self.lag_seconds()
        if lag > max_lag:
            return False, f"leading, lag {lag:.1f}s above ready_max_lag {max_lag:g}s"
        return True, f"leading, lag {lag:.1f}s"

    def _track_applied(self, lanes: Lanes, source: BinlogSource) -> None:
        """How far the pipeline is applied, for the honest lag: everything the reader has
        seen once the lanes owe nothing, else what the ledger has settled."""
        through = lanes.ledger.through() if lanes.ledger.owing() else source.read_through
        if through is not None:
            self.applied_through = max(self.applied_through or 0.0, through)

    def _observer(self, batch: Sequence[RowChange]) -> Callable[[str], None]:
        """What a lane calls once it applied its part of *batch*: the latency histogram."""
        # Rows sharing a table and a commit time (whole seconds) share one observation.
        groups = Counter(
            (c.schema, c.table, c.commit_time) for c in batch if c.commit_time is not None
        )
        registry = self.registry

        def applied(lane: str) -> None:
            sink = "redis" if lane == Lanes.KEYS else "elasticsearch"
            now = time.time()
            for (schema, table, commit_time), count in groups.items():
                spec = registry.get(schema, table)
                if spec is not None and commit_time is not None and _writes_to(spec, sink):
                    latency = max(0.0, now - commit_time)
                    metrics.observe("invalidation_latency_seconds", latency, count, sink=sink)

        return applied

    def _report(self, source: BinlogSource) -> None:
        """Save the status record :mod:`.status` reads, at most every ``SidecarReport.INTERVAL``.

        Another process (``cachesync status``) cannot ask this one for its lag, so
        the sidecar writes it next to the checkpoint: what it has seen and how far
        it has applied. A stale record means the sidecar stopped reporting.
        """
        now = time.time()
        if now - self._reported < SidecarReport.INTERVAL:
            return
        self._reported = now
        report = SidecarReport(source.seen, now, self.applied_through)
        try:
            self.store.save(report.store_name(self.name), report.encode(), self.applied_through)
        except TransientError as exc:
            log.debug("cachesync: status report not saved (%s)", exc)
