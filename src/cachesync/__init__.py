"""cachesync: keep Redis caches and Elasticsearch indexes consistent with MySQL/MariaDB.

Declare what to keep in sync on your models (:class:`Sync`, :class:`Projection`);
the binlog sidecar (``cachesync listen``) is the source of truth for
invalidation, optional after-commit hooks delete keys within milliseconds, and
failures go through a Kafka retry queue with a dead-letter topic.
"""

from .actions import Action, DeleteDoc, DeleteKeys, IndexDoc, RowRef
from .apply import Applier, ApplyReport, Failure, FailureHandler
from .changes import BinlogPosition, Op, OutboxPosition, Position, RowChange
from .config import Settings, configure, get_settings
from .errors import (
    CacheSyncError,
    ConfigurationError,
    DeclarationError,
    DecodeError,
    HandOffError,
    PermanentError,
    SchemaError,
    TransientError,
)
from .planning import plan
from .policies import BatchPolicy, ImmediateRetryPolicy, RetryPolicy
from .registry import Registry, TableSpec, default_registry, resolve
from .spec import Projection, Sync

__all__ = [
    "Action",
    "Applier",
    "ApplyReport",
    "BatchPolicy",
    "BinlogPosition",
    "CacheSyncError",
    "ConfigurationError",
    "DeclarationError",
    "DecodeError",
    "DeleteDoc",
    "DeleteKeys",
    "Failure",
    "FailureHandler",
    "HandOffError",
    "ImmediateRetryPolicy",
    "IndexDoc",
    "Op",
    "OutboxPosition",
    "PermanentError",
    "Position",
    "Projection",
    "Registry",
    "RetryPolicy",
    "RowChange",
    "RowRef",
    "SchemaError",
    "Settings",
    "Sync",
    "TableSpec",
    "TransientError",
    "configure",
    "default_registry",
    "get_settings",
    "plan",
    "resolve",
]
