"""XA transactions in the binlog: their ids, and the rows held between PREPARE and COMMIT.

What MariaDB 10.11 writes (observed; ``tests/integration/binlog/test_xa.py``)::

    GTID 0-1-11 (flags2 & FL_PREPARED_XA, the xid follows)      <- group start
    TABLE_MAP, WRITE/UPDATE/DELETE_ROWS ...                    <- the rows
    QUERY  "XA END X'7831',X'',1"
    XA_PREPARE_LOG_EVENT (38) one_phase=0 formatID gtrid bqual <- no commit yet
      ... any number of other transactions ...
    GTID 0-1-14 (flags2 & FL_COMPLETED_XA)                      <- its own group
    QUERY  "XA COMMIT X'7831',X'',1"  (or "XA ROLLBACK ...")

``XA COMMIT 'x' ONE PHASE`` is logged as an ordinary transaction (GTID without
the XA flags, rows, XID event). MySQL marks the group with a ``XA START`` query
instead of a GTID flag and logs ONE PHASE as an ``XA_PREPARE_LOG_EVENT`` with
``one_phase=1``, which is a commit. The server always writes the xid in hex
(``X'gtrid',X'bqual',formatID``) whatever the client typed, and an id matches
only on all three parts. A read-only XA transaction and an ``XA ROLLBACK``
without PREPARE leave nothing in the binlog.

python-mysql-replication 1.0.x parses event 38 as ``XAPrepareEvent`` but its
``xid`` property decodes gtrid+bqual as UTF-8 (a binary gtrid raises, and
``'ab','c'`` equals ``'a','bc'``), so the ids are read here from the raw packets.

What the source does with them, and why
---------------------------------------
* Rows of a first phase are not returned at PREPARE: they are held in memory
  (:class:`HeldTransactions`, bounded) and returned when the ``XA COMMIT`` with
  the same xid arrives, positioned at that COMMIT (row *i* of the transaction is
  ``BinlogPosition(commit file, commit end, i)``). Commit order is the order in
  which other readers saw the change, so their Elasticsearch versions place them
  after everything committed before, a ``cachesync reindex`` scan included (the
  transaction's row locks keep anyone from changing the same rows in between).
  ``XA ROLLBACK`` drops them: they never reach Redis or Elasticsearch.
* The checkpoint never passes a held transaction: the resume point carries
  ``hold``, the group start of the oldest one, until the last of its rows is
  returned. A source started from such a point first *catches up*: it reads
  from ``hold`` to ``file:pos`` applying nothing (rows of ordinary transactions
  are not even decoded), re-holding the XA transactions prepared there and
  dropping those resolved there, then streams as usual. So an XA transaction
  that stays prepared across restarts of the sidecar (or of the server, which
  keeps it prepared) is applied at its COMMIT, and nothing else is applied twice.
  The price: a restart re-reads the binlog from the oldest unresolved PREPARE.
  A reconnect keeps the held rows in memory (no catch-up).
* An XA transaction that touched no watched table is held too (no rows, just
  its start), so that its COMMIT is recognised after a restart.
* Limits, logged as ERROR naming the xid, with the tables when known: an ``XA
  COMMIT`` of a transaction prepared before the place where this source started
  without a hold (first start, ``--reset-checkpoint``, a checkpoint written by
  an older cachesync, a hold in a purged binlog file), or of one evicted
  because more than ``max_rows`` rows / ``max_prepared`` transactions were held
  (settings ``xa_max_held_rows`` / ``xa_max_prepared``; the oldest go first;
  evicted transactions no longer hold the checkpoint).
  Their rows are not known, so they are not applied: run ``cachesync verify
  --repair`` or a reindex. An ``XA ROLLBACK`` of such a transaction loses nothing.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from dataclasses import dataclass, field

from ..changes import RowChange
from ..policies import XaHoldPolicy

__all__ = [
    "DEFAULT_MAX_HELD_ROWS",
    "DEFAULT_MAX_PREPARED",
    "Group",
    "HeldTransactions",
    "Prepared",
    "Xid",
    "gtid_starts_xa",
    "parse_prepare",
    "parse_query",
]

log = logging.getLogger("cachesync.binlog")

#: Rows held in memory for prepared-but-unresolved XA transactions (all of them together);
#: the setting is ``xa_max_held_rows`` (:class:`~cachesync.policies.XaHoldPolicy`).
DEFAULT_MAX_HELD_ROWS = XaHoldPolicy.DEFAULT.max_held_rows
#: Prepared-but-unresolved XA transactions remembered (with or without rows); ``xa_max_prepared``.
DEFAULT_MAX_PREPARED = XaHoldPolicy.DEFAULT.max_prepared

#: MariaDB ``Gtid_log_event`` flags2 bit: the group is the first phase of an XA transaction.
_FL_PREPARED_XA = 0x40
#: Offset of flags2 in a dump packet: OK byte, 19-byte header, seq_no (8), domain id (4).
_GTID_FLAGS2 = 1 + 19 + 8 + 4

_XID_PART = r"(?:X'(?P<{0}hex>[0-9A-Fa-f]*)'|'(?P<{0}str>(?:[^'\\]|\\.|'')*)')"
_XA_QUERY = re.compile(
    r"^\s*XA\s+(?P<verb>COMMIT|ROLLBACK|START|BEGIN|END)\s+"
    + _XID_PART.format("g")
    + r"(?:\s*,\s*"
    + _XID_PART.format("b")
    + r"(?:\s*,\s*(?P<fmt>\d+))?)?",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Xid:
    """An XA transaction id: ``formatID``, ``gtrid`` and ``bqual`` (bytes, as the server keeps them)."""

    format_id: int
    gtrid: bytes
    bqual: bytes = b""

    def __str__(self) -> str:
        """The id as one would type it in ``XA COMMIT``: quoted when printable, else hex."""

        def part(value: bytes) -> str:
            if all(0x20 <= b < 0x7F and b not in (0x27, 0x5C) for b in value):
                return "'" + value.decode("ascii") + "'"
            return "X'" + value.hex() + "'"

        return f"{part(self.gtrid)},{part(self.bqual)},{self.format_id}"


def gtid_starts_xa(data: bytes) -> bool:
    """Whether a MariaDB GTID event opens the first phase (up to PREPARE) of an XA transaction."""
    return len(data) > _GTID_FLAGS2 and bool(data[_GTID_FLAGS2] & _FL_PREPARED_XA)


def parse_prepare(data: bytes) -> tuple[Xid, bool]:
    """The xid and ``one_phase`` flag of an ``XA_PREPARE_LOG_EVENT`` dump packet.

    Body: one_phase (1), formatID (4), gtrid length (4), bqual length (4), data.
    Raises :class:`IndexError`/:class:`ValueError` on a truncated packet (the
    source treats that as an unreadable event).
    """
    off = 1 + 19
    one_phase = bool(data[off])
    format_id = int.from_bytes(data[off + 1 : off + 5], "little", signed=True)
    gtrid_len = int.from_bytes(data[off + 5 : off + 9], "little")
    bqual_len = int.from_bytes(data[off + 9 : off + 13], "little")
    start = off + 13
    if gtrid_len > 64 or bqual_len > 64 or start + gtrid_len + bqual_len > len(data):
        raise ValueError(f"XA_PREPARE event with xid lengths {gtrid_len}/{bqual_len}")
    gtrid = bytes(data[start : start + gtrid_len])
    bqual = bytes(data[start + gtrid_len : start + gtrid_len + bqual_len])
    return Xid(format_id, gtrid, bqual), one_phase


def _part(match: re.Match[str], name: str) -> bytes:
    hex_value = match[name + "hex"]
    if hex_value is not None:
        return bytes.fromhex(hex_value)
    text = match[name + "str"]
    if text is None:
        return b""
    return re.sub(r"\\(.)|''", lambda m: m[1] or "'", text).encode("utf-8")


def parse_query(query: str) -> tuple[str, Xid] | None:
    """``("COMMIT" | "ROLLBACK" | "START" | "END", xid)`` for an XA statement, else ``None``.

    ``XA COMMIT ... ONE PHASE`` is reported as ``COMMIT`` (the server logs it as
    an ordinary transaction anyway). ``XA BEGIN`` is a synonym of ``XA START``.
    """
    match = _XA_QUERY.match(query)
    if match is None:
        return None
    verb = match["verb"].upper()
    xid = Xid(int(match["fmt"] or 1), _part(match, "g"), _part(match, "b"))
    return ("START" if verb == "BEGIN" else verb), xid


@dataclass
class Group:
    """The first phase of an XA transaction being read (up to its XA_PREPARE event).

    ``dropped`` is set once it alone has more rows than may be held: its rows
    are then no longer kept (nor decoded).
    """

    start: tuple[str, int]
    rows: list[RowChange] = field(default_factory=list)
    tables: set[str] = field(default_factory=set)
    dropped: bool = False


@dataclass
class Prepared:
    """One prepared XA transaction: where its group starts and the rows it holds.

    ``start`` is the binlog file and offset of the group's first event (the
    GTID event): re-reading from there finds its rows again. ``rows`` keep the
    positions of their rows events; they get the COMMIT's position when released.
    """

    xid: Xid
    start: tuple[str, int]
    prepared_at: str
    rows: list[RowChange] = field(default_factory=list)
    tables: set[str] = field(default_factory=set)
    evicted: bool = False


class HeldTransactions:
    """Prepared XA transactions in binlog order, bounded in rows and in count.

    Memory: at most ``max_rows`` rows over all held transactions and
    ``max_prepared`` transactions. When a new prepared transaction would exceed a
    bound, the OLDEST held transactions are evicted: their rows are dropped
    (logged as an ERROR naming the xid) and they stop holding the checkpoint.
    An evicted transaction that later commits is reported as an ERROR again at
    its COMMIT, naming the xid and tables (its changes reached neither Redis nor
    Elasticsearch: run ``cachesync verify``/``reindex``); one that rolls back
    loses nothing.
    """

    def __init__(
        self, max_rows: int = DEFAULT_MAX_HELD_ROWS, max_prepared: int = DEFAULT_MAX_PREPARED
    ) -> None:
        if max_rows < 0 or max_prepared < 1:
            raise ValueError("max_rows must be >= 0 and max_prepared >= 1")
        self.max_rows = max_rows
        self.max_prepared = max_prepared
        self._live: OrderedDict[Xid, Prepared] = OrderedDict()
        self._evicted: OrderedDict[Xid, Prepared] = OrderedDict()
        self.rows = 0

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, xid: object) -> bool:
        return xid in self._live

    @property
    def oldest_start(self) -> tuple[str, int] | None:
        """Where the oldest held transaction's group starts (the checkpoint must not pass it)."""
        for prepared in self._live.values():
            return prepared.start
        return None

    def clear(self) -> None:
        self._live.clear()
        self._evicted.clear()
        self.rows = 0

    def hold(self, prepared: Prepared) -> None:
        """Keep *prepared* until :meth:`resolve`; evicts older ones to stay within bounds."""
        if prepared.evicted:
            self._remember_evicted(prepared)
            return
        while self._live and (
            self.rows + len(prepared.rows) > self.max_rows or len(self._live) >= self.max_prepared
        ):
            _, oldest = self._live.popitem(last=False)
            self.rows -= len(oldest.rows)
            self.evict(oldest)
        self._live[prepared.xid] = prepared
        self.rows += len(prepared.rows)

    def evict(self, prepared: Prepared) -> None:
        """Drop the rows of *prepared* (too many held), remembering its id for its COMMIT."""
        if prepared.rows or prepared.tables:
            log.error(
                "cachesync: XA transaction %s (prepared at %s, tables %s) dropped from memory: "
                "more than %d held rows / %d prepared XA transactions; if it commits, its "
                "changes will NOT be applied (run `cachesync verify --repair` or reindex then)",
                prepared.xid,
                prepared.prepared_at,
                ", ".join(sorted(prepared.tables)) or "-",
                self.max_rows,
                self.max_prepared,
            )
        prepared.rows = []
        prepared.evicted = True
        self._remember_evicted(prepared)

    def prepare(self, xid: Xid, group: Group, where: str) -> None:
        """The first phase *group* of *xid* ended with XA PREPARE at *where*: hold it."""
        prepared = Prepared(xid, group.start, where, group.rows, group.tables, group.dropped)
        self.hold(prepared)
        log.debug("cachesync: XA %s prepared at %s, %d row(s) held", xid, where, len(group.rows))

    def check(self, group: Group) -> None:
        """Drop the rows of a first phase being read that alone exceeds ``max_rows``."""
        if len(group.rows) > self.max_rows:
            log.error(
                "cachesync: an XA transaction starting at %s:%d has more than %d rows, more "
                "than may be held until its COMMIT; they are dropped (named again at COMMIT)",
                *group.start, self.max_rows,
            )  # fmt: skip
            group.rows = []
            group.dropped = True

    def commit(self, xid: Xid, where: str) -> list[RowChange] | None:
        """The held rows of *xid*, committed at *where* (left held: :meth:`resolve` them once
        applied), or ``None`` after an ERROR if they are not known."""
        prepared = self.get(xid)
        if prepared is not None and not prepared.evicted:
            return prepared.rows
        if prepared is None:
            why = (
                "it was prepared before this sidecar's start position (or touched no watched table)"
            )
        else:
            why = "its rows had been dropped from memory (too many held)"
        log.error(
            "cachesync: XA COMMIT of %s at %s: %s; its changes to %s were NOT applied to "
            "Redis/Elasticsearch: run `cachesync verify --repair` or reindex",
            xid, where, why,
            ", ".join(sorted(prepared.tables)) or "-" if prepared else "watched tables",
        )  # fmt: skip
        self.resolve(xid)
        return None

    def rollback(self, xid: Xid, where: str, *, quiet: bool = False) -> None:
        """*xid* rolled back at *where*: its rows are dropped, never applied."""
        prepared = self.resolve(xid)
        if not quiet:
            log.info(
                "cachesync: XA ROLLBACK of %s at %s: %s", xid, where,
                f"its {len(prepared.rows)} held row(s) are dropped, never applied"
                if prepared is not None and not prepared.evicted
                else "nothing of it was applied",
            )  # fmt: skip

    def lost_one_phase(self, xid: Xid | None, group: Group, where: str) -> None:
        """Name a one-phase XA commit whose rows were dropped for being too many."""
        log.error(
            "cachesync: XA transaction %s committed in one phase at %s had more than %d rows, "
            "dropped while it was read; its changes to %s were NOT applied: run "
            "`cachesync verify --repair` or reindex",
            xid or "?", where, self.max_rows, ", ".join(sorted(group.tables)),
        )  # fmt: skip

    def _remember_evicted(self, prepared: Prepared) -> None:
        self._evicted[prepared.xid] = prepared
        while len(self._evicted) > self.max_prepared:
            self._evicted.popitem(last=False)

    def get(self, xid: Xid) -> Prepared | None:
        """The held (or evicted) transaction *xid*, left in place."""
        return self._live.get(xid) or self._evicted.get(xid)

    def resolve(self, xid: Xid) -> Prepared | None:
        """Forget *xid* (its COMMIT or ROLLBACK is done); the entry, or ``None`` if unknown."""
        prepared = self._live.pop(xid, None)
        if prepared is not None:
            self.rows -= len(prepared.rows)
            return prepared
        return self._evicted.pop(xid, None)
