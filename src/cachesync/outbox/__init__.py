"""The transactional outbox: intents written with the business change, failures parked while Kafka is down.

* :mod:`.schema`: the names and states (no SQLAlchemy needed), ``create_table_sql()``.
* :mod:`.table`: the table, described once as a SQLAlchemy ``Table``.
* :mod:`.store`: :class:`OutboxStore`, parking, claiming (``SKIP LOCKED``) and marking rows.
* :mod:`.relay`: :class:`OutboxRelay`, the loop that applies claimed rows.
"""

from .relay import OutboxRelay, RelayReport, decode_row_actions
from .schema import (
    KIND_FAILED,
    KIND_INTENT,
    OUTBOX_TABLE,
    STATE_DEAD,
    STATE_DONE,
    STATE_PENDING,
    create_table_sql,
)
from .store import OutboxStore

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
