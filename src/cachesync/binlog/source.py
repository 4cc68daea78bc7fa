"""``BinlogSource``: committed row changes of registered tables, read from the binlog.

python-mysql-replication is used through :mod:`.framing` (packets, the
library's internals) and :mod:`.tablemaps` (which table ids are watched); its
events and errors become :class:`~cachesync.changes.RowChange` and
:mod:`cachesync.errors` in this package and nowhere else.

How it reads, and why
---------------------
* File + position mode (``COM_BINLOG_DUMP``), ``is_mariadb=False`` even on
  MariaDB (the library ignores the position when ``is_mariadb=True`` without
  GTIDs), ``resume_stream=True`` (``False`` replays the file from offset 4),
  blocking, with server heartbeats and a socket read timeout so a dead idle
  connection is noticed.
* Positions are OURS, not the library's: its ``log_pos`` also moves over
  filtered-out events and its reconnect is a single immediate retry that
  resumes mid-transaction. On any connection error the reader is rebuilt from
  :attr:`BinlogSource.resume_point` after the
  :class:`~cachesync.policies.ReconnectPolicy`'s backoff.
* A :class:`~cachesync.binlog.checkpoint.ResumePoint` is the start of the
  current transaction plus the last row handled inside it, so a restart repeats
  nothing and loses nothing even in the middle of a 1000-row transaction.
* GTIDs (MariaDB always, MySQL with ``gtid_mode=ON``): the point also holds the
  GTID state before the transaction in progress, and rows are
  :class:`~cachesync.changes.GtidPosition` (rows event and row inside their
  transaction), which mean the same on a promoted replica. Every connect first
  finds that state in the server at hand (:func:`.positions.locate`), then
  streams by file and offset as above; a transaction already in the state (a
  replica that logged two domains in another order) is passed over. The
  library's own GTID streaming is not used: its reconnect replays events.
* Filtering happens before decoding: a ``TableMapEvent`` of an unregistered
  table is dropped by the library (``only_tables``/``only_schemas``) and rows
  events whose table id has no map are skipped without being decoded.
* Speed: parsed table maps are cached by their bytes (:mod:`.tablemaps`), and
  rows of tables whose column types are all common ones (integers, floats,
  strings, blobs, DATE, DATETIME2, TIMESTAMP2, DECIMAL, ENUM) are decoded by a
  per-table decoder (:mod:`.decoder`) built once per map; any other table uses
  the library's own decoder. ``tests/integration/binlog/test_decoder.py``
  checks that both give identical values.

Where each part lives
---------------------
:class:`BinlogSource` reads packets, dispatches them and owns the connection;
its concepts are mixins over one shared state (:mod:`.streamstate`: position,
GTID and XA state, and the boundary rule):

* :mod:`.gtidtracking` - the GTID of the transaction read, passing over
  transactions already in the state, finding the state on a (new) server;
* :mod:`.statementholds` - the hold before a TRUNCATE/DROP/RENAME of a watched
  table (:attr:`BinlogSource.table_statement`, :meth:`BinlogSource.pass_table_statement`);
* :mod:`.xaholds` - rows of prepared XA transactions held until their COMMIT,
  and the catch-up that re-holds them after a restart (details in :mod:`.xa`);
* :mod:`.rowstream` - rows events of watched tables become :class:`RowChange`.
"""

from __future__ import annotations

import logging
import re
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import pymysql

from .. import metrics
from ..changes import RowChange
from ..errors import SourceConfigurationError, SourceError, TransientError
from ..policies import ReconnectPolicy, XaHoldPolicy
from ..registry import Registry
from . import framing, server, tabledrops
from .checkpoint import ResumePoint
from .framing import EventParser, StreamReader
from .gtidtracking import GtidTracking
from .rowstream import RowStream
from .statementholds import TableStatementHolds
from .tablemaps import TableMaps
from .xa import HeldTransactions, gtid_starts_xa
from .xaholds import XaHolds

__all__ = ["BinlogSource", "ReconnectPolicy"]

log = logging.getLogger("cachesync.binlog")

_DDL = re.compile(r"\s*(?:ALTER|CREATE|DROP|RENAME)\b", re.IGNORECASE)

#: What to add to the translated error 1236 (the binlog cannot be sent from the checkpoint).
_PURGED_HINT = (
    "; if the file was purged, changes are lost: restart with "
    "`cachesync listen --reset-checkpoint` and rebuild with `cachesync reindex MODEL`"
)


class BinlogSource(RowStream, XaHolds, TableStatementHolds, GtidTracking):
    """Streams :class:`RowChange` objects of the tables in *registry* from a resume point.

    Single-threaded and pull-based: :meth:`poll` returns up to ``max_rows``
    changes, waiting at most ``max_wait`` seconds for the first one and not
    waiting for more after that (the caller's batching loop decides how long a
    batch may stay open). :attr:`resume_point` always says
    where to restart to continue right after the last change returned, so a
    caller that saves it after applying a batch loses nothing and repeats
    nothing. Connection problems are handled inside :meth:`poll` (reconnect with
    backoff from :attr:`resume_point`, waiting through the injected *sleep*); it
    raises only :class:`SourceConfigurationError` (grants, purged binlog,
    unsupported settings) and :class:`SourceError` (data it cannot read correctly).
    *xa* bounds what prepared XA transactions may hold in memory (:mod:`.xa`).
    """

    def __init__(
        self,
        connection: Mapping[str, Any],
        registry: Registry,
        *,
        server_id: int,
        start: ResumePoint,
        default_schema: str | None = None,
        policy: ReconnectPolicy | None = None,
        stop: threading.Event | None = None,
        sleep: Callable[[float], object] | None = None,
        xa: XaHoldPolicy | None = None,
        give_up_after: int | None = None,
    ) -> None:
        self._params = {k: v for k, v in connection.items() if k != "database"}
        self._server_id = server_id
        default_schema = default_schema or connection.get("database")
        self._policy = policy or ReconnectPolicy.DEFAULT
        self._stop = stop or threading.Event()
        self._sleep = sleep or self._stop.wait
        specs = registry.tables()
        if not specs:
            raise SourceConfigurationError("no model is declared: nothing to watch (--models?)")
        self._only_tables = sorted({s.table for s in specs})
        schemas = {s.schema or default_schema for s in specs}
        only_schemas: list[str] | None = (
            None if None in schemas else sorted(s for s in schemas if s is not None)
        )
        holds = xa or XaHoldPolicy.DEFAULT
        super().__init__(start, HeldTransactions(holds.max_held_rows, holds.max_prepared))
        self._give_up_after = give_up_after
        # Connection state.
        self._reader: StreamReader | None = None
        self._conn: Any = None
        self._failures = 0
        self._last_packet = time.monotonic()
        self._parser = EventParser(self._only_tables, only_schemas)
        self._maps = TableMaps(self._params, registry, default_schema, self._parser)
        #: Wall time before which every committed change has been returned by :meth:`poll`
        #: (``None`` until known): advanced by transactions of every table, watched or not,
        #: and by the server's heartbeats on an idle stream. The sidecar's honest lag.
        self.read_through: float | None = None
        #: End ``(file, offset)`` of the newest event read, whatever its table.
        self.seen: tuple[str, int] | None = None
        #: Called with (schema, statement) for each DDL statement in the stream.
        self.on_ddl: Callable[[Any, str], object] | None = None
        # A TRUNCATE/DROP/RENAME of a watched table the stream is held at (tabledrops).
        self._registry = registry
        self._default_schema = default_schema
        self._table_statement: tabledrops.TableStatement | None = None

    # -- public -----------------------------------------------------------------------------

    @property
    def resume_point(self) -> ResumePoint:
        """Where to restart so that the next change read is the one after the last returned."""
        if self._catchup is not None:
            return self._catchup
        hold = self._held.oldest_start
        hold_gtid = self._group_states.get(hold) if hold is not None else None
        return ResumePoint(
            self._file,
            self._txn_start,
            self._handled,
            self._commit_time,
            hold,
            self._gtids,
            hold_gtid if self._gtids is not None else None,
        )

    @property
    def server(self) -> tuple[str, int]:
        """The host and port this source reads."""
        return str(self._params.get("host")), int(self._params.get("port") or 3306)

    @property
    def tables(self) -> list[str]:
        """The tables the reader filters on (``only_tables``)."""
        return list(self._only_tables)

    def poll(self, max_rows: int, max_wait: float) -> list[RowChange]:
        """Up to *max_rows* changes, waiting at most *max_wait* s for the first one.

        Once it has changes it returns as soon as no further transaction is
        immediately available (it finishes the transaction it is in, unless
        *max_wait* is over). Returns early, possibly empty, when the stream broke
        (it reconnects on the next call) or when the stop event is set.
        """
        deadline = time.monotonic() + max_wait
        out: list[RowChange] = []
        pending = self._pending
        while True:
            if pending:
                room = max_rows - len(out)
                if room >= len(pending):
                    out.extend(pending)
                    pending.clear()
                else:
                    out.extend(pending.popleft() for _ in range(room))
                self._handled = out[-1].position  # type: ignore[assignment]
                if not pending and self._resolving is not None:
                    self._resolved()
                if len(out) >= max_rows:
                    break
                continue
            if self._table_statement is not None:
                break  # held before a TRUNCATE/DROP/RENAME until the caller purged
            if self._stop.is_set():
                break
            now = time.monotonic()
            if out and now >= deadline:
                break
            try:
                if self._conn is None:
                    self._connect()
                # Between transactions: wait for the first change only; once there are
                # some, return as soon as nothing more is immediately available.
                wait = 0.0 if out else max(0.0, deadline - now)
                if self._at_boundary and not framing.readable(self._conn, wait):
                    silence = time.monotonic() - self._last_packet
                    if silence <= 2 * self._policy.heartbeat and not pending:
                        # Heard from the server within a heartbeat and nothing more is
                        # waiting: every change committed until now has been returned.
                        self.read_through = time.time()
                    if silence > self._policy.read_timeout:
                        # The server sends a heartbeat every `heartbeat` s on an idle
                        # stream: this much silence means the connection is dead.
                        raise TransientError(f"no event or heartbeat for {silence:.1f}s")
                    break
                self._step()
                self._last_packet = time.monotonic()
                self._failures = 0
                if self._at_boundary and not pending and self._commit_time is not None:
                    # Past a transaction of any table, watched or not, with nothing left to
                    # return: changes committed before its (whole-second) time are all out.
                    self.read_through = max(self.read_through or 0.0, self._commit_time)
            except TransientError as exc:
                self._disconnect()
                self._failures += 1
                delay = self._policy.backoff.delay(self._failures)
                log.warning(
                    "cachesync: binlog stream lost (%s); reconnecting from %s in %.1fs",
                    exc,
                    self.resume_point,
                    delay,
                )
                if self._give_up_after is not None and self._failures >= self._give_up_after:
                    # Another server may have taken over: the caller chooses again.
                    raise TransientError(
                        f"binlog stream from {self.server[0]}:{self.server[1]} lost "
                        f"{self._failures} times in a row: {exc}"
                    ) from exc
                if not out:
                    self._sleep(delay)
                break
        if out:
            per_table = Counter((c.schema, c.table) for c in out)
            for (schema, table), count in per_table.items():
                metrics.inc("changes_total", count, table=f"{schema}.{table}")
        return out

    def close(self) -> None:
        """Close the stream connection (the position state is kept)."""
        self._disconnect()

    def __enter__(self) -> BinlogSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connection ---------------------------------------------------------------------------

    def _connect(self) -> None:
        """Open the dump at the transaction start; rows up to ``handled`` will be skipped."""
        self._pending.clear()
        self._resolving = None
        self._group = None
        self._maps.forget_ids()
        self._skip = self.resume_point if self._handled is not None else None
        if self._catchup is not None and self._catchup.hold is not None:
            # (Re)start the catch-up from the oldest hold: everything held is read again.
            self._held.clear()
            self._file, self._txn_start = self._catchup.hold
            self._handled = self._skip = None
        self._at_boundary = True
        settings = dict(self._params)
        settings.setdefault("connect_timeout", self._policy.connect_timeout)
        settings["read_timeout"] = self._policy.read_timeout
        self._relocate(settings)
        self._gtid, self._seen, self._event_no = None, False, 0
        reader = StreamReader(
            settings,
            server_id=self._server_id,
            resume_stream=True,
            blocking=True,
            log_file=self._file,
            log_pos=self._txn_start,
            only_tables=self._only_tables,
            only_schemas=self._parser.only_schemas,
            slave_heartbeat=self._policy.heartbeat,
            is_mariadb=False,
            enable_logging=False,
        )
        try:
            conn = reader.connect()
        except (pymysql.MySQLError, OSError) as exc:
            reader.close()
            self._raise(exc)
        self._reader, self._conn = reader, conn
        self._last_packet = time.monotonic()
        self._parser.connected(reader, conn)
        log.info(
            "cachesync: streaming binlog from %s (server_id %d, tables %s)",
            self.resume_point,
            self._server_id,
            ", ".join(self._only_tables),
        )

    def _disconnect(self) -> None:
        reader, self._reader, self._conn = self._reader, None, None
        if reader is not None:
            try:
                reader.close()
            except Exception:
                log.debug("cachesync: error closing the binlog stream", exc_info=True)

    def _raise(self, exc: BaseException, what: str = "binlog stream") -> NoReturn:
        """Raise *exc* translated; transient ones make :meth:`poll` reconnect."""
        error = server.translate(exc, what)
        if isinstance(error, TransientError):
            raise error from exc
        if error.context.get("code") == 1236:
            where = f"{self._file}:{self._txn_start}"
            if self._gtids is not None:
                where += f", GTID state {self._gtids}"
            raise SourceConfigurationError(
                f"{error} ({where}){_PURGED_HINT}", **error.context
            ) from None
        raise error from None

    # -- events -------------------------------------------------------------------------------

    def _step(self) -> None:
        """Read and handle one event."""
        try:
            packet = framing.read_packet(self._conn)
        except Exception as exc:
            self._raise(exc)
        data: bytes = packet._data
        if data[0] == 0xFE and len(data) < 9:  # EOF: the server ended the dump
            raise TransientError("the server closed the binlog stream")
        timestamp, kind, _server, size, end, _flags = framing.HEADER.unpack_from(data, 1)
        if end:
            self.seen = (self._file, end)
        if self._catchup is not None and end and kind not in framing.NOT_IN_FILE:
            self._end_catchup(end - size, kind)
        try:
            if kind in framing.ROWS_OPS:
                self._at_boundary = False
                self._rows(packet, data, kind, timestamp, end)
            elif kind == framing.TABLE_MAP:
                self._at_boundary = False
                self._maps.table_map(packet, data)
            elif kind == framing.XID:
                if self._group is None:
                    self._boundary(end, timestamp)
                else:  # an XA transaction ended by a plain commit: what it read is committed
                    self._commit_group(self._group, end, timestamp)
            elif kind == framing.QUERY:
                event = self._parser.library_event(packet, self._maps.lib)
                if event is not None:
                    self._query(event.query, end, timestamp, event.schema)
            elif kind == framing.MARIADB_GTID or kind == framing.MYSQL_GTID:
                self._gtid_event(data, kind, _server)
                if kind == framing.MARIADB_GTID and gtid_starts_xa(data):
                    self._group = self._new_group()
            elif kind == framing.XA_PREPARE:
                self._prepare(data, end, timestamp)
            elif kind == framing.ROTATE:
                self._rotate(packet, timestamp)
            elif kind == framing.FORMAT_DESCRIPTION:
                self._parser.format_description(packet)
            elif kind in framing.COMPRESSED:
                raise SourceConfigurationError(
                    f"the binlog holds compressed events at {self._file}:{self._txn_start}, "
                    "which python-mysql-replication cannot read; turn off log_bin_compress "
                    "(MariaDB) / binlog_transaction_compression (MySQL)"
                )
            # GTID, heartbeat, annotate, checkpoint, intvar ... carry nothing we need.
        except (SourceError, TransientError):
            raise
        except (struct.error, IndexError, AssertionError, ValueError) as exc:
            # A truncated or garbled packet: the connection is not to be trusted.
            raise TransientError(f"unreadable event of type {kind}: {exc!r}") from exc

    def _query(self, query: str, end: int, timestamp: int, schema: str | None = None) -> None:
        head = query.lstrip()[:3].upper()
        if head == "BEG" and query.strip().upper() == "BEGIN":
            return
        if head == "XA " and self._xa_query(query, end, timestamp):
            return
        if self.on_ddl is not None and _DDL.match(query):
            self.on_ddl(schema, query)
        if self._catchup is None and self._stop_at_table_statement(query, end, timestamp, schema):
            return  # the boundary waits for pass_table_statement()
        # COMMIT of a non-transactional engine, DDL, SAVEPOINT ...: the next statement
        # starts with its own table maps, so it is safe to resume here.
        self._boundary(end, timestamp)

    def _rotate(self, packet: Any, timestamp: int) -> None:
        event = self._parser.library_event(packet, self._maps.lib)
        if event is None or event.next_binlog == self._file:
            return  # the artificial rotate that opens every dump names our own file
        log.info("cachesync: binlog rotated to %s:%d", event.next_binlog, event.position)
        self._file = event.next_binlog
        self._txn_start = max(4, int(event.position))
        self._handled = None
        self._skip = None
        self._at_boundary = True
        # Table ids are only unique within one server run; a new file may follow a restart.
        self._maps.forget_ids()
