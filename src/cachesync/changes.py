"""What the sources produce: :class:`RowChange` at a :class:`Position`.

Every source (binlog, outbox) speaks these types, and nothing downstream knows
which source a change came from. A position is comparable, serialisable
(:meth:`Position.encode` / :func:`Position.decode`) and yields a monotonic
integer, :attr:`Position.version`, used as the Elasticsearch external version so
that a late retry of an older change can never replace newer data.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from functools import total_ordering
from typing import Any, ClassVar

from .errors import DecodeError

__all__ = ["BinlogPosition", "GtidPosition", "Op", "OutboxPosition", "Position", "RowChange"]

_ROW_BITS = 12
_OFFSET_BITS = 32
_FILE_BITS = 63 - _ROW_BITS - _OFFSET_BITS
_ROW_MAX = (1 << _ROW_BITS) - 1
#: GTID versions start here: above every file+position version of a binlog file
#: numbered below 2**18, so an index written before the upgrade never sees a
#: newer change get a smaller version.
GTID_VERSION_BASE = 1 << 62
_EVENT_BITS = 10
_EVENT_MAX = (1 << _EVENT_BITS) - 1
_WEIGHT_BITS = 62 - _EVENT_BITS - _ROW_BITS


class Op(enum.Enum):
    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"


@total_ordering
class Position(ABC):
    """A point in a change source. Subclasses are frozen dataclasses."""

    kind: ClassVar[str]

    @property
    @abstractmethod
    def version(self) -> int:
        """A positive integer below 2**63 that grows with the position (ES external version)."""

    @abstractmethod
    def sort_key(self) -> tuple[Any, ...]:
        """Tuple that orders positions of the same kind."""

    @abstractmethod
    def encode(self) -> str:
        """A compact text form; :meth:`decode` inverts it."""

    @staticmethod
    def decode(text: str) -> Position:
        """Parse what :meth:`encode` produced; :class:`DecodeError` on anything else."""
        try:
            kind, rest = text.split(":", 1)
            position: Position | None = None
            if kind == BinlogPosition.kind:
                file, pos, row = rest.rsplit(":", 2)
                position = BinlogPosition(file, int(pos), int(row))
            elif kind == GtidPosition.kind:
                gtid, weight, event, row = rest.rsplit(":", 3)
                position = GtidPosition(gtid, int(weight), int(event), int(row))
            elif kind == OutboxPosition.kind:
                ident, row = rest.split(":")
                position = OutboxPosition(int(ident), int(row))
            # A position must also yield its Elasticsearch version (1..2**63-1):
            # one that cannot would fail later, far from where it was read.
            if position is not None and 0 < position.version < 2**63:
                return position
        except (ValueError, AttributeError, OverflowError):
            pass
        raise DecodeError(f"not a cachesync position (or one out of range): {text!r:.200}")

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Position) or other.kind != self.kind:
            return NotImplemented
        return self.sort_key() < other.sort_key()

    def __str__(self) -> str:
        return self.encode()


@dataclass(frozen=True, eq=True)
class BinlogPosition(Position):
    """A row in the binlog: ``file`` and the end offset ``pos`` of its rows event, row index ``row``.

    The version packs the file's sequence number (19 bits), the offset (32 bits)
    and the row index within the event (12 bits, saturating: two changes of one
    document further apart than 4095 rows of ONE event share a version, and the
    applier keeps only the last change of a document within a batch anyway).
    """

    file: str
    pos: int
    row: int = 0
    kind: ClassVar[str] = "binlog"

    @property
    def file_index(self) -> int:
        try:
            return int(self.file.rsplit(".", 1)[1])
        except (IndexError, ValueError):
            raise DecodeError(f"binlog file name {self.file!r} has no numeric suffix") from None

    @property
    def version(self) -> int:
        index = self.file_index
        if index >= 1 << _FILE_BITS or self.pos >= 1 << _OFFSET_BITS:
            raise OverflowError(f"{self} does not fit an Elasticsearch version")
        return (
            (index << (_OFFSET_BITS + _ROW_BITS))
            | (self.pos << _ROW_BITS)
            | min(self.row, _ROW_MAX)
        )

    def sort_key(self) -> tuple[Any, ...]:
        return (self.file_index, self.pos, self.row)

    def encode(self) -> str:
        return f"{self.kind}:{self.file}:{self.pos}:{self.row}"

    def __lt__(self, other: object) -> bool:
        return Position.__lt__(self, other)


@dataclass(frozen=True, eq=True)
class GtidPosition(Position):
    """A row of the transaction ``gtid``: rows event ``event`` of it, row ``row`` of that event.

    ``weight`` is the :attr:`~cachesync.binlog.gtid.GtidState.weight` of the
    GTID state that includes the transaction (MariaDB: the sum of the
    per-domain sequence numbers; MySQL: the number of transactions). It grows
    with every transaction in any server's binlog order and it is the same on
    a replica that kept the primary's GTIDs, so versions stay monotonic across
    a failover, where file names and offsets restart. The version is
    ``2**62 + weight * 2**22 + event * 2**12 + row`` (event and row saturate at
    1023 and 4095, like :class:`BinlogPosition`'s row), above every
    file+position version of an index written before the upgrade.
    """

    gtid: str
    weight: int
    event: int = 0
    row: int = 0
    kind: ClassVar[str] = "gtid"

    @property
    def version(self) -> int:
        if not 0 <= self.weight < 1 << _WEIGHT_BITS:
            raise OverflowError(f"{self} does not fit an Elasticsearch version")
        return (
            GTID_VERSION_BASE
            | (self.weight << (_EVENT_BITS + _ROW_BITS))
            | (min(self.event, _EVENT_MAX) << _ROW_BITS)
            | min(self.row, _ROW_MAX)
        )

    def sort_key(self) -> tuple[Any, ...]:
        return (self.weight, self.event, self.row)

    def encode(self) -> str:
        return f"{self.kind}:{self.gtid}:{self.weight}:{self.event}:{self.row}"

    def __lt__(self, other: object) -> bool:
        return Position.__lt__(self, other)


@dataclass(frozen=True, eq=True)
class OutboxPosition(Position):
    """A row of the outbox table (``id``) and the index of an action within it."""

    id: int
    row: int = 0
    kind: ClassVar[str] = "outbox"

    @property
    def version(self) -> int:
        return (self.id << _ROW_BITS) | min(self.row, _ROW_MAX)

    def sort_key(self) -> tuple[Any, ...]:
        return (self.id, self.row)

    def encode(self) -> str:
        return f"{self.kind}:{self.id}:{self.row}"

    def __lt__(self, other: object) -> bool:
        return Position.__lt__(self, other)


@dataclass(frozen=True)
class RowChange:
    """One committed change of one row, with full before/after images keyed by COLUMN name.

    ``before`` is ``None`` for inserts, ``after`` is ``None`` for deletes.
    ``commit_time`` is the transaction's commit time in epoch seconds when the
    source knows it (used for lag).
    """

    op: Op
    schema: str | None
    table: str
    before: Mapping[str, Any] | None
    after: Mapping[str, Any] | None
    position: Position | None = None
    commit_time: float | None = None

    def __post_init__(self) -> None:
        if (self.op is Op.INSERT and self.after is None) or (
            self.op is Op.DELETE and self.before is None
        ):
            raise ValueError(f"{self.op.value} of {self.table} lacks its row image")
        if self.op is Op.UPDATE and (self.before is None or self.after is None):
            raise ValueError(f"update of {self.table} needs before and after images")
