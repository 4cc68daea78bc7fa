"""The binlog sidecar: the source of truth for invalidation (needs ``cachesync[mysql]``).

* :class:`BinlogSource` - committed :class:`~cachesync.changes.RowChange` objects
  of registered tables, resumable exactly inside multi-row transactions.
* :class:`Sidecar` - batches, applies, checkpoints; one leader per pipeline
  (:class:`LeaderLock`). Its knobs: :class:`SidecarPolicy`, :class:`ReconnectPolicy`
  (defined in :mod:`cachesync.policies`, re-exported here).
* :class:`ResumePoint`, :class:`TableCheckpointStore`, :class:`FileCheckpointStore`.
* :func:`check_server` - start-up guards; :func:`reindex` - safe index rebuild.

python-mysql-replication stays inside :mod:`cachesync.binlog.framing` and
:mod:`cachesync.binlog.tablemaps` (used by :mod:`cachesync.binlog.source`);
PyMySQL errors become :mod:`cachesync.errors` through one translator,
:func:`cachesync.binlog.server.translate`.
"""

from ..errors import LeadershipLost
from ..policies import ReconnectPolicy, SidecarPolicy
from .checkpoint import (
    CHECKPOINT_TABLE_SQL,
    CheckpointStore,
    FileCheckpointStore,
    ResumePoint,
    StoredCheckpoint,
    TableCheckpointStore,
    checkpoint_store,
)
from .guards import check_server
from .leader import LeaderLock
from .reindex import ReindexReport, reindex
from .sidecar import Sidecar, build_applier
from .source import BinlogSource
from .status import StatusReport, collect_status

__all__ = [
    "CHECKPOINT_TABLE_SQL",
    "BinlogSource",
    "CheckpointStore",
    "FileCheckpointStore",
    "LeaderLock",
    "LeadershipLost",
    "ReconnectPolicy",
    "ReindexReport",
    "ResumePoint",
    "Sidecar",
    "SidecarPolicy",
    "StatusReport",
    "StoredCheckpoint",
    "TableCheckpointStore",
    "build_applier",
    "check_server",
    "checkpoint_store",
    "collect_status",
    "reindex",
]
