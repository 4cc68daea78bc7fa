"""The fixed catalogue of cachesync metrics, counted in-process.

Names are a closed set (:data:`CATALOGUE`) so dashboards never chase renamed
metrics; :func:`inc` on an unknown name is a programming error. The Prometheus
exposition (``render_prometheus``) is plain text and needs no client library.
"""

from __future__ import annotations

import threading
from collections import Counter

__all__ = ["CATALOGUE", "inc", "render_prometheus", "reset", "snapshot"]

CATALOGUE: dict[str, str] = {
    "changes_total": "row changes read from a source",
    "keys_deleted_total": "cache keys deleted (UNLINK)",
    "documents_written_total": "documents indexed or deleted in Elasticsearch",
    "apply_retries_total": "immediate (tenacity) retries of a failed apply",
    "handed_off_total": "actions handed to the failure handler after immediate retries",
    "fast_path_failures_total": "after-commit deletes that failed and were handed off",
    "retries_total": "retry-queue messages re-applied",
    "retry_succeeded_total": "retry-queue messages applied successfully",
    "dead_letters_total": "actions sent to the dead-letter topic or store",
    "poison_changes_total": "row changes that could not be planned, dead-lettered (the stream went on)",
    "redriven_total": "dead letters sent back to the retry topic",
    "outbox_pending_total": "actions stored in the outbox because Kafka was unreachable",
    "outbox_relayed_total": "outbox entries applied or published by the relay",
    "checkpoints_total": "checkpoints saved",
    "batches_total": "batches applied by the sidecar",
    "lane_handoffs_total": "actions a stuck sink lane handed to the retry path unapplied",
    "partial_images_total": "row changes logged with partial row images (binlog_row_image != FULL)",
    "partial_rereads_total": "rows re-read by primary key to complete partial row images",
    "partial_unknowable_total": "partial-image changes with a value that cannot be known (dead-lettered)",
    "table_statements_total": "TRUNCATE/DROP/RENAME statements of watched tables purged",
    "purged_keys_total": "cache keys deleted by pattern after a TRUNCATE/DROP/RENAME",
    "purged_documents_total": "documents deleted after a TRUNCATE/DROP/RENAME",
}

_lock = threading.Lock()
_counts: Counter[str] = Counter()


def inc(name: str, amount: int = 1) -> None:
    if name not in CATALOGUE:
        raise KeyError(f"metric {name!r} is not in cachesync.metrics.CATALOGUE")
    with _lock:
        _counts[name] += amount


def snapshot() -> dict[str, int]:
    """Current value of every metric in the catalogue."""
    with _lock:
        return {name: _counts.get(name, 0) for name in CATALOGUE}


def reset() -> None:
    with _lock:
        _counts.clear()


def render_prometheus() -> str:
    lines: list[str] = []
    for name, value in snapshot().items():
        full = f"cachesync_{name}"
        lines += [f"# HELP {full} {CATALOGUE[name]}", f"# TYPE {full} counter", f"{full} {value}"]
    return "\n".join(lines) + "\n"
