"""GTID tracking of the binlog source: which transaction is read, and where a GTID state starts.

GTIDs (MariaDB always, MySQL with ``gtid_mode=ON``) make a resume point mean
the same on a promoted replica, whose binlog files and offsets differ from the
primary's. The source keeps the GTID state before the transaction in progress
(:class:`~cachesync.binlog.gtid.GtidState`); a transaction the state already
contains was handled before (a replica that logged two domains in another
order) and is passed over. On every connect the state is found in the server
at hand (:func:`.positions.locate`) and the stream continues by file and
offset from there; the library's own GTID streaming is not used, because its
reconnect replays events.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ..changes import BinlogPosition
from . import framing, positions
from .streamstate import StreamState

__all__ = ["GtidTracking"]

log = logging.getLogger("cachesync.binlog")


class GtidTracking(StreamState):
    """The GTID part of :class:`~cachesync.binlog.source.BinlogSource` (a mixin)."""

    _server_id: int

    def _gtid_event(self, data: bytes, kind: int, server_id: int) -> None:
        """A transaction starts: take its GTID (and its weight) if GTIDs are tracked."""
        state = self._gtids
        self._event_no = 0
        if state is None:
            return
        gtid = framing.gtid_of(data, kind, server_id)
        self._gtid = gtid
        self._seen = state.contains(gtid)
        if not self._seen:
            self._next = state.add(gtid)  # the state once this transaction is passed
            self._weight = self._next.weight
        elif self._catchup is None:
            log.info("cachesync: passing over %s, handled before (GTID state %s)", gtid, state)

    def _relocate(self, settings: Mapping[str, Any]) -> None:
        """Find the GTID state (and an XA catch-up's) in this server's files.

        A row still identified by its offset (a checkpoint just upgraded from
        file+position) pins the file+position it was written for.
        """
        if self._gtids is None or isinstance(self._handled, BinlogPosition):
            return
        catchup = self._catchup
        if catchup is not None and catchup.hold is not None:
            if catchup.hold_gtid is None or catchup.gtid is None:
                return  # a hold that predates GTIDs: only its own server has it
            hold = positions.locate(settings, self._server_id, catchup.hold_gtid)
            target = positions.locate(settings, self._server_id, catchup.gtid)
            handled = catchup.handled if target == (catchup.file, catchup.pos) else None
            self._catchup = replace(
                catchup, file=target[0], pos=target[1], hold=hold, handled=handled
            )
            self._gtids = catchup.hold_gtid
            self._group_states[hold] = catchup.hold_gtid
            return
        located = positions.locate(settings, self._server_id, self._gtids)
        # The same file, at or after the recorded start (which is the rotation's offset 4
        # for a file's first transaction): the server the point was taken on.
        if self._handled is not None and (located[0] != self._file or located[1] < self._txn_start):
            # Another server (or a rotated file): its rows events may be split otherwise,
            # so the transaction in progress is replayed whole (idempotent effects).
            log.info(
                "cachesync: the transaction after GTID state %s starts at %s:%d here, not at "
                "%s:%d: replaying it from its start",
                self._gtids, *located, self._file, self._txn_start,
            )  # fmt: skip
            self._handled = self._skip = None
        self._file, self._txn_start = located
