"""``cachesync status``: how far behind the sidecar is, and who leads.

Honest lag comes from the sidecar itself: about once a second a streaming
leader saves a :class:`SidecarReport` next to its checkpoint (the newest binlog
position it has read, whatever the table, and the time before which every
committed change is applied, advanced by other tables' transactions and by
the server's heartbeats while idle). Measuring against the checkpoint instead
is wrong both ways: the checkpoint only moves when there is something to
save, and its own write is the newest event of an idle binlog, so an idle
pipeline looked further behind every second.

* Lag in seconds: from a fresh report (younger than :data:`SidecarReport.STALE`),
  the lag it reported; from a stale one (the sidecar is stopped, paused or stuck
  in a batch), the time since it last had everything applied, growing.
* Lag in bytes: binlog written after the position the sidecar last reported
  reading (exact offsets; across files, the sizes from ``SHOW BINARY LOGS``);
  while idle, that is its own last report's write.
* Without a report (no sidecar ever streamed with this version): the old upper
  bound from the checkpoint.

With GTIDs the checkpoint's (or the report's) file may be another server's
(after a failover): lag is then also counted in transactions, the difference of the GTID states'
weights (exact on MySQL; on MariaDB exact while sequence numbers have no gaps),
and bytes are shown only when the checkpoint's file is on this server.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from ..errors import DecodeError
from . import server
from .checkpoint import CheckpointStore, ResumePoint
from .fanjobs import FanoutJob, job_prefix
from .leader import LeaderLock, lock_name
from .positions import server_state

__all__ = ["SidecarReport", "StatusReport", "collect_status", "lag_bytes"]


@dataclass(frozen=True)
class SidecarReport:
    """What a streaming sidecar last said about itself (saved in the checkpoint store).

    ``seen`` is the end of the newest binlog event read, ``reported_at`` when the
    report was written and ``applied_through`` the wall time before which every
    committed change had been applied (``None`` before the first batch or idle poll).
    """

    seen: tuple[str, int] | None
    reported_at: float
    applied_through: float | None

    #: How often the sidecar writes it (seconds).
    INTERVAL: ClassVar[float] = 1.0
    #: Older than this, the sidecar has stopped reporting: lag counts up from its last word.
    STALE: ClassVar[float] = 5.0

    @staticmethod
    def store_name(pipeline: str) -> str:
        """The checkpoint-store entry of *pipeline*'s report (beside its checkpoint)."""
        return f"{pipeline}#status"

    def encode(self) -> str:
        seen = f"{self.seen[0]}:{self.seen[1]}" if self.seen else None
        return json.dumps({"seen": seen, "at": round(self.reported_at, 3)})

    @classmethod
    def decode(cls, text: str, applied_through: float | None) -> SidecarReport | None:
        try:
            data = json.loads(text)
            seen = None
            if data.get("seen"):
                file, _, pos = str(data["seen"]).rpartition(":")
                seen = (file, int(pos))
            return cls(seen, float(data["at"]), applied_through)
        except (ValueError, TypeError, KeyError, AttributeError):
            return None

    def lag_seconds(self, now: float) -> float | None:
        """The lag as of *now*: as reported while fresh, counting up from it once stale."""
        if self.applied_through is None:
            return None
        if now - self.reported_at <= self.STALE:
            return max(0.0, self.reported_at - self.applied_through)
        return max(0.0, now - self.applied_through)


@dataclass
class StatusReport:
    """One pipeline's state; ``None`` where it is unknown."""

    name: str
    checkpoint: str | None
    checkpoint_store: str
    checkpoint_updated_at: float | None
    server_position: str
    lag_bytes: int | None
    lag_transactions: int | None
    lag_seconds: float | None
    leader_connection: int | None
    leader: str | None
    lock: str
    read_position: str | None = None
    reported_at: float | None = None
    lag_from: str = "checkpoint"
    #: related-row fan-outs still being worked through in the background (binlog/fanjobs.py)
    fanouts: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        def when(ts: float | None) -> str:
            return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) if ts else "never"

        leader = "none (no sidecar is streaming)"
        if self.leader_connection is not None:
            leader = f"connection {self.leader_connection}" + (
                f" ({self.leader})" if self.leader else ""
            )
        lag = "unknown (no checkpoint)"
        parts = []
        if self.lag_transactions is not None:
            parts.append(f"{self.lag_transactions} transactions")
        if self.lag_bytes is not None:
            parts.append(f"{self.lag_bytes} bytes")
        if parts and self.lag_seconds is not None:
            parts.append(f"{self.lag_seconds:.1f} s")
        if parts:
            lag = ", ".join(parts)
            if self.lag_from == "report":
                lag += f" (sidecar read {self.read_position}, reported {when(self.reported_at)})"
            else:
                lag += " (from the checkpoint: no sidecar report)"
        return [
            f"pipeline     {self.name}",
            f"checkpoint   {self.checkpoint or 'none'} "
            f"(updated {when(self.checkpoint_updated_at)}; {self.checkpoint_store})",
            f"server       {self.server_position}",
            f"lag          {lag}",
            f"leader       {leader} [lock {self.lock}]",
            f"fan-outs     {len(self.fanouts) or 'none'} in progress",
            *(f"  {line}" for line in self.fanouts),
        ]


def lag_bytes(point: ResumePoint, files: list[server.BinlogFile], current: tuple[str, int]) -> int:
    """Bytes of binlog between *point* and the server's *current* position."""
    file, pos = current
    if point.file == file:
        return max(0, pos - point.pos)
    total, counting = 0, False
    for entry in files:
        if entry.name == point.file:
            counting = True
            total += max(0, entry.size - point.pos)
        elif entry.name == file:
            total += pos
            break
        elif counting:
            total += entry.size
    return total


def collect_status(
    mysql: dict[str, Any], store: CheckpointStore, name: str, *, now: float | None = None
) -> StatusReport:
    """Read the checkpoint, the server position and the leader lock."""
    conn = server.connect(mysql, what="MySQL")
    try:
        current = server.master_status(conn)
        files = server.binary_logs(conn)
        flavour = server.gtid_flavour(conn)
        state = server_state(conn, flavour) if flavour is not None else None
        stored = store.load(name)
        reported = store.load(SidecarReport.store_name(name))
        fanouts = []
        for entry in store.names(job_prefix(name)):
            job = store.load(entry)
            if job is not None:
                fanouts.append(FanoutJob.summary(job.position))
        point = None
        if stored is not None:
            try:
                point = ResumePoint.decode(stored.position, stored.commit_time)
            except DecodeError:
                point = None
        lock = LeaderLock(mysql, lock_name(mysql.get("database"), name))
        try:
            holder = lock.holder()
        finally:
            lock.close()
        leader = None
        if holder is not None:
            with server.translate_errors("reading the process list"), conn.cursor() as cur:
                cur.execute(
                    "SELECT USER, HOST FROM information_schema.PROCESSLIST WHERE ID = %s",
                    (holder,),
                )
                row = cur.fetchone()
            if row is not None:
                leader = f"{row[0]}@{row[1]}"
    finally:
        conn.close()
    now = now or time.time()
    lag = seconds = transactions = None
    report = (
        SidecarReport.decode(reported.position, reported.commit_time)
        if reported is not None
        else None
    )
    gtid = point.gtid if point is not None else None
    if gtid is not None and state is not None and state.flavour == gtid.flavour:
        transactions = 0 if gtid.covers(state) else max(0, state.weight - gtid.weight)
    if report is not None and report.seen is not None:
        if any(f.name == report.seen[0] for f in files):  # else another server's (failover)
            seen = ResumePoint(report.seen[0], max(4, report.seen[1]))
            lag = lag_bytes(seen, files, current)
        seconds = report.lag_seconds(now)
    elif point is not None:
        report = None
        if point.gtid is None or any(f.name == point.file for f in files):
            lag = lag_bytes(point, files, current)
        if lag == 0 or transactions == 0:
            seconds = 0.0
        elif point.commit_time is not None:
            seconds = max(0.0, now - point.commit_time)
    return StatusReport(
        name=name,
        checkpoint=stored.position if stored is not None else None,
        checkpoint_store=store.describe(),
        checkpoint_updated_at=stored.updated_at if stored is not None else None,
        server_position=f"{current[0]}:{current[1]}"
        + (f" (GTID {state})" if state is not None else ""),
        lag_bytes=lag,
        lag_transactions=transactions,
        lag_seconds=seconds,
        leader_connection=holder,
        leader=leader,
        lock=lock_name(mysql.get("database"), name),
        read_position=f"{report.seen[0]}:{report.seen[1]}" if report and report.seen else None,
        reported_at=report.reported_at if report else None,
        lag_from="report" if report else "checkpoint",
        fanouts=tuple(fanouts),
    )
