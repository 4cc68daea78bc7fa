"""The transactional outbox: intents written with the business change, failures parked while Kafka is down.

* :mod:`.schema`: the names and states (no SQLAlchemy needed), ``create_table_sql()``.
* :mod:`.table`: the table, described once as a SQLAlchemy ``Table``.
* :mod:`.store`: :class:`OutboxStore`, parking, claiming (``SKIP LOCKED``) and marking rows.
* :mod:`.relay`: :class:`OutboxRelay`, the loop that applies claimed rows.

The names and states are listed once, in ``schema.__all__``, and re-exported
from there on first access: a star import would resolve ``schema.COLUMNS``,
which needs SQLAlchemy, and importing this package must not.
"""

from typing import TYPE_CHECKING, Any

from . import schema
from .relay import OutboxRelay, RelayReport, decode_row_actions
from .store import OutboxStore

if TYPE_CHECKING:
    from .schema import *  # noqa: F403

__all__ = [
    *schema.__all__,
    "OutboxRelay",
    "OutboxStore",
    "RelayReport",
    "decode_row_actions",
]


def __getattr__(name: str) -> Any:
    if name in schema.__all__:
        return getattr(schema, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
