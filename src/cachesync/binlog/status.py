"""``cachesync status``: how far behind the sidecar is, and who leads.

Lag in bytes is exact (binlog offsets; across files, the sizes from ``SHOW
BINARY LOGS``). Lag in seconds is the age of the checkpoint's commit time while
the sidecar is behind, 0 when it has caught up: an upper bound, since the oldest
unhandled change may be younger than the last handled one.

With GTIDs the checkpoint's file may be another server's (after a failover):
lag is then counted in transactions, the difference of the GTID states'
weights (exact on MySQL; on MariaDB exact while sequence numbers have no gaps),
and bytes are shown only when the checkpoint's file is on this server.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import DecodeError
from . import server
from .checkpoint import CheckpointStore, ResumePoint
from .leader import LeaderLock, lock_name
from .positions import server_state

__all__ = ["StatusReport", "collect_status", "lag_bytes"]


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
        return [
            f"pipeline     {self.name}",
            f"checkpoint   {self.checkpoint or 'none'} "
            f"(updated {when(self.checkpoint_updated_at)}; {self.checkpoint_store})",
            f"server       {self.server_position}",
            f"lag          {lag}",
            f"leader       {leader} [lock {self.lock}]",
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
    lag = seconds = transactions = None
    if point is not None:
        if point.gtid is None or any(f.name == point.file for f in files):
            lag = lag_bytes(point, files, current)
        if point.gtid is not None and state is not None and state.flavour == point.gtid.flavour:
            transactions = (
                0 if point.gtid.covers(state) else max(0, state.weight - point.gtid.weight)
            )
        if lag == 0 or transactions == 0:
            seconds = 0.0
        elif point.commit_time is not None:
            seconds = max(0.0, (now or time.time()) - point.commit_time)
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
    )
