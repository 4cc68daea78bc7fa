"""The RowChange stream: rows events of watched tables become :class:`~cachesync.changes.RowChange`.

Filtering happens before decoding: rows events whose table id has no map
(:mod:`.tablemaps`, an unwatched table) are skipped without being decoded,
and so are rows handled before a restart. Rows of an XA transaction's first
phase go to its group (:mod:`.xaholds`) instead of the stream. Rows of a
session with ``binlog_row_image != FULL`` become
:class:`~cachesync.binlog.partial.PartialChange` (completed or reported
downstream), never a reason to stop the stream.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ..changes import BinlogPosition, GtidPosition, RowChange
from . import framing
from .framing import EventParser, PartialRows
from .partial import PartialChange
from .streamstate import StreamState
from .tablemaps import TableMaps

__all__ = ["RowStream"]


class RowStream(StreamState):
    """The rows part of :class:`~cachesync.binlog.source.BinlogSource` (a mixin)."""

    _parser: EventParser
    _maps: TableMaps

    def _rows(self, packet: Any, data: bytes, kind: int, timestamp: int, end: int) -> None:
        event_no = self._event_no  # counts every rows event: the same whatever is watched
        self._event_no += 1
        if self._seen:
            return  # a transaction in the GTID state: handled before (module docstring)
        table_id = int.from_bytes(data[20:26], "little")
        table = self._maps.get(table_id)
        if table is None:
            return  # table not watched: filtered before decoding
        group = self._group
        pending: list[RowChange] | deque[RowChange]
        if group is not None:  # an XA transaction's first phase: held until its COMMIT
            if group.dropped:
                return
            pending, skip = group.rows, None
            group.tables.add(f"{table.schema}.{table.name}")
        elif self._catchup is not None:
            return  # applied before the restart: catching up only re-holds XA transactions
        else:
            pending, skip = self._pending, self._skip
            handled = skip.handled if skip is not None else None
            if isinstance(handled, BinlogPosition) and end < handled.pos:
                return  # the whole event was handled before the restart
            if (
                isinstance(handled, GtidPosition)
                and handled.gtid == self._gtid
                and event_no < handled.event
            ):
                return
        op = framing.ROWS_OPS[kind]
        images = self._parser.row_images(packet, data, kind, table.decoder, self._maps.lib)
        partial: PartialRows | None = None
        if isinstance(images, PartialRows):
            # A session with binlog_row_image != FULL: completed or reported downstream
            # (cachesync.binlog.partial), never a reason to stop the stream.
            partial, images = images, images.images
        position_file = self._file
        commit_time = float(timestamp)
        schema, name = table.schema, table.name
        row_position = self._row_position
        for index, (before, after) in enumerate(images):
            position = row_position(position_file, end, event_no, index)
            if skip is not None and self._handled_already(
                skip, position, position_file, end, index
            ):
                continue
            if partial is None:
                pending.append(RowChange(op, schema, name, before, after, position, commit_time))
            else:
                columns, unknown, setting = partial.columns, partial.unknown_after, partial.setting
                pending.append(
                    PartialChange(
                        op,
                        schema,
                        name,
                        before,
                        after,
                        position,
                        commit_time,
                        frozenset(columns),
                        unknown,
                        setting,
                    )
                )
        if group is not None:
            self._held.check(group)
