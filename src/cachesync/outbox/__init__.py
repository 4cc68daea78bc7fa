"""The transactional outbox: intents written with the business change, failures parked while Kafka is down."""

from .relay import OutboxRelay, OutboxStore, RelayReport, decode_row_actions
from .schema import (
    KIND_FAILED,
    KIND_INTENT,
    OUTBOX_TABLE,
    STATE_DEAD,
    STATE_DONE,
    STATE_PENDING,
    create_table_sql,
)

__all__ = [
    "KIND_FAILED",
    "KIND_INTENT",
    "OUTBOX_TABLE",
    "STATE_DEAD",
    "STATE_DONE",
    "STATE_PENDING",
    "OutboxRelay",
    "OutboxStore",
    "RelayReport",
    "create_table_sql",
    "decode_row_actions",
]
