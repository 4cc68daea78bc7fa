"""Where a checkpoint is on a given server: first start, upgrade, GTID lookup, current position.

A :class:`~cachesync.binlog.checkpoint.ResumePoint` with a GTID state names a
place in the stream of transactions, not in one server's files; the functions
here translate between the two on the server at hand:

* :func:`first_point`: a pipeline without a checkpoint starts at the server's
  current position, with its GTID state when the server has GTIDs (read
  atomically with the position: ``BINLOG_GTID_POS`` of that very position on
  MariaDB, the same ``SHOW MASTER STATUS`` row on MySQL).
* :func:`upgrade`: a file+position checkpoint of an older cachesync gets the
  GTID state of its position (``BINLOG_GTID_POS(file, pos)``), never discarded.
  Its row inside the transaction in progress stays an offset, valid on the
  server it was written for, until that transaction is passed.
* :func:`locate`: the binlog file and offset, on this server, of the first
  transaction not in a state: a short non-blocking GTID dump (the server
  itself resolves the state, as for a replica) read up to the first GTID
  event. python-mysql-replication's own GTID mode is used for that handshake
  only, never to stream: its reconnect replays events from the start state.
* :func:`current_position`: the position ``reindex`` and ``verify --repair``
  write documents at (same version scheme as the stream, so later changes win).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import pymysql

from ..changes import BinlogPosition, GtidPosition
from ..errors import SourceConfigurationError, TransientError
from . import framing, server
from .checkpoint import ResumePoint
from .gtid import GtidState, parse_state

__all__ = [
    "current_position",
    "first_point",
    "gtid_problems",
    "locate",
    "server_state",
    "state_at",
    "upgrade",
]

log = logging.getLogger("cachesync.binlog")

#: File+position versions of binlog files numbered at or above this may exceed GTID versions.
_MAX_FILE_INDEX = 1 << 18


def server_state(conn: Any, flavour: str) -> GtidState:
    """The GTID state of everything in the server's binlog now."""
    name = "gtid_binlog_pos" if flavour == "mariadb" else "gtid_executed"
    with server.translate_errors(f"SELECT @@{name}"), conn.cursor() as cur:
        cur.execute(f"SELECT @@GLOBAL.{name}")
        row = cur.fetchone()
    return parse_state(flavour, str(row[0] or "") if row else "")


def state_at(conn: Any, flavour: str, file: str, pos: int) -> GtidState | None:
    """The GTID state at ``file:pos`` (MariaDB ``BINLOG_GTID_POS``); ``None`` if unknown."""
    if flavour != "mariadb":
        return None
    with server.translate_errors("BINLOG_GTID_POS"), conn.cursor() as cur:
        cur.execute("SELECT BINLOG_GTID_POS(%s, %s)", (file, pos))
        row = cur.fetchone()
    if row is None or row[0] is None:
        return None
    return parse_state(flavour, str(row[0]))


def _status(conn: Any, flavour: str | None) -> tuple[str, int, GtidState | None]:
    """File, offset and (when the server has GTIDs) the GTID state at that offset."""
    if flavour == "mysql":
        row = server.master_status_row(conn)
        return str(row[0]), int(row[1]), parse_state("mysql", str(row[4] or ""))
    file, pos = server.master_status(conn)
    state = state_at(conn, flavour, file, pos) if flavour else None
    return file, pos, state


def first_point(conn: Any, commit_time: float) -> ResumePoint:
    """The server's current position, with its GTID state when the server has GTIDs."""
    file, pos, state = _status(conn, server.gtid_flavour(conn))
    return ResumePoint(file, pos, None, commit_time, gtid=state)


def current_position(conn: Any) -> BinlogPosition | GtidPosition:
    """Where documents written now (reindex, repair) belong: below every later change."""
    flavour = server.gtid_flavour(conn)
    if flavour is not None:
        return GtidPosition("", server_state(conn, flavour).weight)
    file, pos = server.master_status(conn)
    return BinlogPosition(file, pos, 0)


def upgrade(conn: Any, point: ResumePoint, name: str) -> ResumePoint:
    """*point* with the GTID state of its position, if the server has GTIDs and it had none."""
    if point.gtid is not None:
        return point
    flavour = server.gtid_flavour(conn)
    if flavour is None:
        return point
    try:
        index = BinlogPosition(point.file, point.pos).file_index
    except ValueError:
        index = 0
    if index >= _MAX_FILE_INDEX:
        raise SourceConfigurationError(
            f"checkpoint {name!r} is in binlog file {point.file}: its Elasticsearch versions "
            "may exceed the GTID-based ones, so documents could stop updating; reindex every "
            "projection into new indexes, then start with `cachesync listen --reset-checkpoint`"
        )
    state = state_at(conn, flavour, point.file, point.pos)
    if state is None:
        log.warning(
            "cachesync: checkpoint %r (%s) stays a file+position one: %s",
            name, point,
            "the server cannot map it to a GTID state (file purged?)" if flavour == "mariadb"
            else "MySQL has no BINLOG_GTID_POS; it keeps working on this server only",
        )  # fmt: skip
        return point
    hold_state: GtidState | None = None
    if point.hold is not None:
        hold_state = state_at(conn, flavour, *point.hold)
    upgraded = dataclasses.replace(
        point, gtid=state, hold_gtid=hold_state, hold=point.hold if hold_state else None
    )
    if point.hold is not None and hold_state is None:
        log.error(
            "cachesync: checkpoint %r held prepared XA transactions from %s:%d, which the "
            "server cannot map to a GTID state; they are named at their COMMIT",
            name, *point.hold,
        )  # fmt: skip
    log.info("cachesync: checkpoint %r upgraded from %s to %s", name, point, upgraded)
    return upgraded


def gtid_problems(conn: Any, point: ResumePoint, name: str) -> list[str] | None:
    """What keeps this server from resuming the GTID checkpoint *point* (``None``: not GTID)."""
    if point.gtid is None or isinstance(point.handled, BinlogPosition):
        return None
    flavour = server.gtid_flavour(conn)
    if flavour != point.gtid.flavour:
        return [
            f"checkpoint {name!r} holds a {point.gtid.flavour} GTID state ({point.gtid}) but "
            f"this server {'has no GTIDs' if flavour is None else 'is ' + flavour}; is "
            "mysql_url the right server?"
        ]
    state = server_state(conn, flavour)
    if state.covers(point.gtid):
        return []
    return [
        f"checkpoint {name!r} is at GTID state {point.gtid}, which this server (at {state}) "
        "has not reached: it lacks transactions the sidecar already handled (a replica that "
        "is behind, or promoted before it caught up); point mysql_url at a server that has "
        "them, or start over with `cachesync listen --reset-checkpoint` and `cachesync "
        "reindex MODEL`"
    ]


def locate(
    settings: Mapping[str, Any], server_id: int, state: GtidState, *, attempts: int = 5
) -> tuple[str, int]:
    """File and offset, on the server of *settings*, where the first transaction not in *state* starts.

    Raises :class:`SourceConfigurationError` when the server cannot send from
    *state* (purged, or a state it never had) and :class:`TransientError` on
    connection trouble.
    """
    for _ in range(attempts):
        found, last = _scan(settings, server_id, state)
        if found is not None:
            return found
        # Nothing after the state yet: the end of the binlog, if it still is the state.
        conn = server.connect(settings, what="MySQL")
        try:
            file, pos, here = _status(conn, state.flavour)
        finally:
            conn.close()
        if here is not None and here == state:
            return file, pos
        log.debug("cachesync: binlog moved while locating %s (%s, %s)", state, last, here)
    raise TransientError(f"could not locate GTID state {state} in a binlog that keeps moving")


def _scan(
    settings: Mapping[str, Any], server_id: int, state: GtidState
) -> tuple[tuple[str, int] | None, str | None]:
    """Read a non-blocking GTID dump from *state* up to its first transaction."""
    reader = framing.StreamReader(
        dict(settings),
        server_id=server_id,
        blocking=False,
        auto_position=state.encode(),
        is_mariadb=state.flavour == "mariadb",
        only_tables=[],
        enable_logging=False,
    )
    parser = framing.EventParser([], None)
    file: str | None = None
    try:
        try:
            conn = reader.connect()
            parser.connected(reader, conn)
            while True:
                data: bytes = framing.read_packet(conn)._data
                if data[0] == 0xFE and len(data) < 9:
                    return None, file
                _ts, kind, _server, size, end, _flags = framing.HEADER.unpack_from(data, 1)
                if kind == framing.ROTATE:
                    stop = len(data) - parser.checksum
                    file = bytes(data[28:stop]).decode()
                elif kind in framing.GTID_EVENTS and end and file is not None:
                    return (file, end - size), file
        except (pymysql.MySQLError, OSError) as exc:
            error = server.translate(exc, f"locating GTID state {state}")
            if isinstance(error, TransientError):
                raise error from exc
            if error.context.get("code") == 1236:
                raise SourceConfigurationError(
                    f"{error}: the server cannot send the binlog from the checkpoint's GTID "
                    f"state {state} (purged, or transactions it never had); recover with "
                    "`cachesync listen --reset-checkpoint`, then `cachesync reindex MODEL`",
                    code=1236,
                ) from None
            raise error from None
    finally:
        reader.close()
