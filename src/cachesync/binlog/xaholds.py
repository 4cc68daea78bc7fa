"""XA holds of the binlog source: rows of a prepared XA transaction wait for its COMMIT.

* Rows of an XA PREPARE are held (bounded, :class:`~cachesync.binlog.xa.HeldTransactions`)
  and returned at the matching ``XA COMMIT``, positioned at the COMMIT; an
  ``XA ROLLBACK`` drops them.
* The resume point carries ``hold``, the start of the oldest held transaction;
  a source started from such a point first *catches up* from there
  (re-holding, applying nothing), so a prepared transaction survives restarts.

What the server writes and why this order is right: :mod:`.xa`.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from ..changes import BinlogPosition, RowChange
from . import framing, xa
from .streamstate import StreamState
from .xa import Group, Xid

__all__ = ["XaHolds"]

log = logging.getLogger("cachesync.binlog")


class XaHolds(StreamState):
    """The XA part of :class:`~cachesync.binlog.source.BinlogSource` (a mixin)."""

    @property
    def held(self) -> int:
        """How many prepared XA transactions are held, waiting for their COMMIT or ROLLBACK."""
        return len(self._held)

    def _xa_query(self, query: str, end: int, timestamp: int) -> bool:
        """Handle an ``XA ...`` QUERY event; whether it was one this part handles.

        ``XA START`` opens a group (MySQL marks the first phase so), ``XA END``
        is not a boundary (its XA_PREPARE or one-phase commit follows); any
        other statement is the caller's.
        """
        parsed = xa.parse_query(query)
        verb, xid = parsed if parsed is not None else ("", None)
        if verb == "START":  # MySQL marks an XA transaction's first phase so
            if self._group is None:
                self._group = self._new_group()
            return True
        if verb == "END":
            return True  # not a boundary: its XA_PREPARE (or one-phase commit) follows
        if verb == "COMMIT" and xid is not None:
            self._xa_commit(xid, end, timestamp)
            return True
        if verb == "ROLLBACK" and xid is not None:
            self._xa_rollback(xid, end, timestamp)
            return True
        return False

    def _new_group(self) -> Group:
        """An XA transaction's first phase starts here; remember its GTID state for holds."""
        start = (self._file, self._txn_start)
        if self._gtids is not None:
            self._group_states[start] = self._gtids
        return Group(start)

    def _prepare(self, data: bytes, end: int, timestamp: int) -> None:
        """An XA_PREPARE event: hold the group's rows until its COMMIT (or commit them now)."""
        xid, one_phase = xa.parse_prepare(data)
        group, self._group = self._group, None
        if one_phase or group is None:  # None: not seen as XA at its start (cannot happen)
            self._commit_group(group, end, timestamp, xid)
        else:
            self._held.prepare(xid, group, f"{self._file}:{end}")
            self._boundary(end, timestamp)

    def _commit_group(
        self, group: Group | None, end: int, timestamp: int, xid: Xid | None = None
    ) -> None:
        """An XA transaction committed in one phase: its rows are ordinary committed rows."""
        if group is None or self._catchup is not None:
            self._boundary(end, timestamp)
        elif group.dropped:
            self._held.lost_one_phase(xid, group, f"{self._file}:{end}")
            self._boundary(end, timestamp)
        else:
            self._release(group.rows, None, end, timestamp, reposition=False)

    def _xa_commit(self, xid: Xid, end: int, timestamp: int) -> None:
        rows: list[RowChange] | None = None
        if self._catchup is not None:  # applied before the restart
            self._held.resolve(xid)
        else:
            rows = self._held.commit(xid, f"{self._file}:{end}")
        if rows is None:
            self._boundary(end, timestamp)
        else:  # forgotten, and the checkpoint let go, only once they are all returned
            self._release(rows, xid, end, timestamp, reposition=True)

    def _xa_rollback(self, xid: Xid, end: int, timestamp: int) -> None:
        self._held.rollback(xid, f"{self._file}:{end}", quiet=self._catchup is not None)
        self._boundary(end, timestamp)

    def _release(
        self, rows: list[RowChange], xid: Xid | None, end: int, timestamp: int, *, reposition: bool
    ) -> None:
        """Return *rows* as committed at the event ending at *end*, then pass that boundary.

        With *reposition* row *i* gets the position ``(file, end, i)`` of the
        COMMIT (its place in commit order, and a position inside the current
        transaction that a resume point can record). The boundary (and, for
        an XA COMMIT, forgetting *xid*, which holds the checkpoint until then)
        waits until :meth:`poll` has returned the last of them.
        """
        skip, pending, file = self._skip, self._pending, self._file
        commit_time = float(timestamp)
        for index, row in enumerate(rows):
            if reposition:
                position = self._row_position(file, end, 0, index)
                row = replace(row, position=position, commit_time=commit_time)
                if skip is not None and self._handled_already(skip, position, file, end, index):
                    continue
            elif skip is not None and skip.already_handled(row.position):  # type: ignore[arg-type]
                continue
            pending.append(row)
        self._resolving = (xid, end, timestamp)
        if not pending:
            self._resolved()

    def _resolved(self) -> None:
        assert self._resolving is not None
        xid, end, timestamp = self._resolving
        self._resolving = None
        if xid is not None:
            self._held.resolve(xid)
        self._boundary(end, timestamp)

    def _end_catchup(self, start: int, kind: int) -> None:
        """Stop catching up at the first event at or after the point this source started from.

        With GTIDs: at the first transaction once the state has caught up with the target's.
        """
        target = self._catchup
        assert target is not None
        if target.gtid is not None and self._gtids is not None:
            if kind not in framing.GTID_EVENTS or not self._gtids.covers(target.gtid):
                return
            self._gtids = target.gtid
        else:
            here = BinlogPosition(self._file, start)
            if here < BinlogPosition(target.file, target.pos):
                return
        self._catchup = None
        self._handled = target.handled
        self._skip = target if target.handled is not None else None
        log.info(
            "cachesync: caught up to %s from %s:%d; %d prepared XA transaction(s) held",
            target, *(target.hold or ("?", 0)), len(self._held),
        )  # fmt: skip
