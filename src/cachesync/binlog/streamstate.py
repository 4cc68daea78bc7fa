"""The position state of a :class:`~cachesync.binlog.source.BinlogSource`, shared by its parts.

The source is one object read by one thread, but its concepts live in their
own modules (:mod:`.gtidtracking`, :mod:`.statementholds`, :mod:`.xaholds`,
:mod:`.rowstream`), each a mixin of :class:`StreamState`. This class holds the
state they all read, so that a reader finds every field and its meaning in one
place, and the two rules every part relies on:

* :meth:`StreamState._boundary`: passing a transaction boundary is the only way
  the resume position (file, transaction start, GTID state) moves forward;
* :meth:`StreamState._row_position`: how this stream names a row, the same for a
  row read now and one returned later (an XA COMMIT's rows).
"""

from __future__ import annotations

from collections import deque

from ..changes import BinlogPosition, GtidPosition, Position, RowChange
from .checkpoint import ResumePoint
from .gtid import GtidState
from .xa import Group, HeldTransactions, Xid

__all__ = ["StreamState"]


class StreamState:
    """Where the stream is: position, GTID and XA state (see :class:`~.checkpoint.ResumePoint`).

    Not used on its own; :class:`~cachesync.binlog.source.BinlogSource` is the
    one concrete class. Not thread-safe (neither is the source).
    """

    def __init__(self, start: ResumePoint, held: HeldTransactions) -> None:
        # Position state (see ResumePoint).
        self._file = start.file
        self._txn_start = start.pos
        self._handled = start.handled
        self._skip = start if start.handled is not None else None
        self._commit_time = start.commit_time
        self._pending: deque[RowChange] = deque()
        self._at_boundary = True
        # GTID state (None: file+position only): the state before the transaction in
        # progress, that transaction's GTID and weight, whether the state has it
        # already, and the rows events seen in it; the state at each XA group start.
        self._gtids: GtidState | None = start.gtid
        self._gtid: str | None = None
        self._weight = 0
        self._next: GtidState | None = None
        self._seen = False
        self._event_no = 0
        self._group_states: dict[tuple[str, int], GtidState] = {}
        # XA state: prepared transactions, the first phase being read, the boundary to
        # pass once the rows of a COMMIT are all returned, and the catch-up target.
        self._held = held
        self._group: Group | None = None
        self._resolving: tuple[Xid | None, int, int] | None = None
        self._catchup: ResumePoint | None = start if start.hold is not None else None

    def _boundary(self, end: int, timestamp: int) -> None:
        self._group = None
        gtid, self._gtid = self._gtid, None
        if gtid is not None and self._gtids is not None and not self._seen:
            self._gtids = self._next
        self._seen = False
        if end:
            self._txn_start = end
            self._handled = None
            skip = self._skip
            # After a failover the handled transaction may come later than others.
            if (
                skip is None
                or not isinstance(skip.handled, GtidPosition)
                or skip.handled.gtid == gtid
            ):
                self._skip = None
        self._commit_time = float(timestamp) or self._commit_time
        self._at_boundary = True
        if self._group_states:  # keep the states of held XA groups only
            oldest = self._held.oldest_start
            if oldest is None:
                self._group_states.clear()
            else:
                first = BinlogPosition(*oldest)
                for start in [s for s in self._group_states if BinlogPosition(*s) < first]:
                    del self._group_states[start]

    def _row_position(
        self, file: str, end: int, event: int, index: int
    ) -> BinlogPosition | GtidPosition:
        """Row *index* of rows event *event* (ending at *end*), as this stream positions rows."""
        if self._gtid is not None and not self._seen:
            return GtidPosition(self._gtid, self._weight, event, index)
        return BinlogPosition(file, end, index)

    def _handled_already(
        self, skip: ResumePoint, position: Position, file: str, end: int, index: int
    ) -> bool:
        """Whether the row at *position* was handled before the restart *skip* describes.

        A checkpoint just upgraded from file+position names its row by offset.
        """
        if isinstance(skip.handled, BinlogPosition) and isinstance(position, GtidPosition):
            return skip.already_handled(BinlogPosition(file, end, index))
        return skip.already_handled(position)  # type: ignore[arg-type]
