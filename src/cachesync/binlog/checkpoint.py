"""Where the sidecar restarts: :class:`ResumePoint` and the stores that keep it durable.

A binlog position alone cannot say "half of this transaction is done": a
reader restarted in the middle of a transaction has lost the ``TableMapEvent``
that describes its rows, and one restarted at the transaction's start repeats
the half already handled. So a :class:`ResumePoint` records the START of the
transaction in progress (always a safe place to reconnect: every statement's
table maps follow it) plus the position of the last row already handled inside
it. On resume the reader starts at the transaction and skips rows up to that
position. Positions are absolute offsets in the binlog, so the skip stays exact
even if the set of watched tables changed between two runs (a row count would
not). Transactions never span binlog files.

A prepared XA transaction's rows are held in memory until its ``XA COMMIT``
(:mod:`.xa`), which may come much later, even in another file. While any are
held the point also carries ``hold``: the start of the oldest held transaction's
group. A restart reads from ``hold`` again only to re-hold the XA transactions
still unresolved at ``file:pos`` (nothing else in between is applied twice),
then continues at ``file:pos`` as usual.

GTID (MariaDB always, MySQL with ``gtid_mode=ON``): the point also carries
``gtid``, the GTID state before the transaction in progress, and then
``handled`` is a :class:`~cachesync.changes.GtidPosition` (rows event and row
inside that transaction). A GTID means the same on a promoted replica, where
file names and offsets do not, so a (re)connect finds ``gtid`` in whichever
server it reads (:func:`cachesync.binlog.gtid.locate`); ``file:pos`` is then
only where it was last seen (for ``status`` and logs). ``hold_gtid`` is the
GTID state at ``hold``. The text form appends ``;mariadb=STATE`` (or
``;mysql=STATE``), ``;handled=GTID/EVENT.ROW`` and ``;hold=STATE`` to the
file+position form, so a checkpoint written before GTIDs still decodes (and is
converted on the first start with ``BINLOG_GTID_POS``).

Stores are deliberately dumb: they keep one text position per pipeline name
(``Settings.name``) and know nothing about binlogs, so the Django integration
and other sources can reuse the same table.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..changes import BinlogPosition, GtidPosition
from ..errors import (
    CacheSyncError,
    ConfigurationError,
    DecodeError,
    TransientError,
    redact_url,
)
from . import server
from .gtid import GtidState, parse_state

__all__ = [
    "CHECKPOINT_TABLE",
    "CHECKPOINT_TABLE_SQL",
    "CheckpointStore",
    "FileCheckpointStore",
    "ResumePoint",
    "StoredCheckpoint",
    "TableCheckpointStore",
    "checkpoint_store",
]

CHECKPOINT_TABLE = "cachesync_checkpoint"

#: Plain SQL (MySQL/MariaDB) so that Django migrations and DBAs can create the same table.
#: ``commit_time`` is the source commit time (epoch seconds) of the checkpointed position,
#: used for lag in seconds; ``updated_at`` is when the row was last written (UTC).
CHECKPOINT_TABLE_SQL = f"""CREATE TABLE IF NOT EXISTS {CHECKPOINT_TABLE} (
    name VARCHAR(191) NOT NULL PRIMARY KEY,
    position VARCHAR(255) NOT NULL,
    commit_time DOUBLE NULL,
    updated_at DATETIME(6) NOT NULL
)"""

#: ``position VARCHAR(255)``: see :meth:`TableCheckpointStore.save`.
_POSITION_WIDTH = 255

_RESUME = re.compile(
    r"^binlog:(?P<file>[^:+@]+):(?P<pos>\d+)(?:\+(?P<end>\d+)\.(?P<row>\d+))?"
    r"(?:@(?P<hfile>[^:+@]+):(?P<hpos>\d+))?$"
)


@dataclass(frozen=True)
class ResumePoint:
    """Restart the binlog at ``file:pos`` and skip rows up to ``handled`` (inclusive).

    ``pos`` is the start of the transaction in progress, or of the next one when
    ``handled`` is ``None``. ``commit_time`` is the source time of the last
    event taken into account (epoch seconds), for lag reporting. ``hold`` is the
    start ``(file, offset)`` of the oldest prepared XA transaction whose rows
    are held unapplied (see the module docstring); it is before ``file:pos``.
    """

    file: str
    pos: int
    handled: BinlogPosition | GtidPosition | None = None
    commit_time: float | None = None
    hold: tuple[str, int] | None = None
    gtid: GtidState | None = None
    hold_gtid: GtidState | None = None

    def __post_init__(self) -> None:
        if self.pos < 4:
            raise ValueError(f"binlog offset {self.pos} is before the first event (4)")
        if isinstance(self.handled, GtidPosition):
            if self.gtid is None:
                raise ValueError(f"handled row {self.handled} needs the GTID state it follows")
        elif self.handled is not None and (
            self.handled.file != self.file or self.handled.pos <= self.pos
        ):
            raise ValueError(f"handled row {self.handled} is not inside {self.file}:{self.pos}")
        if self.hold_gtid is not None and (self.hold is None or self.gtid is None):
            raise ValueError("a hold GTID state needs a hold and a GTID state")
        if self.hold is not None:
            hold = BinlogPosition(*self.hold)
            if self.hold[1] < 4 or not hold < BinlogPosition(self.file, self.pos):
                raise ValueError(
                    f"hold {hold.file}:{hold.pos} is not before {self.file}:{self.pos}"
                )

    def encode(self) -> str:
        """``binlog:FILE:POS``, then ``+END.ROW`` (last handled row), then ``@FILE:POS`` (hold)."""
        text = f"binlog:{self.file}:{self.pos}"
        if isinstance(self.handled, BinlogPosition):
            text += f"+{self.handled.pos}.{self.handled.row}"
        if self.hold is not None:
            text += f"@{self.hold[0]}:{self.hold[1]}"
        if self.gtid is not None:
            text += f";{self.gtid.flavour}={self.gtid.encode()}"
            if isinstance(self.handled, GtidPosition):
                handled = self.handled
                text += f";handled={handled.gtid}/{handled.event}.{handled.row}"
            if self.hold_gtid is not None:
                text += f";hold={self.hold_gtid.encode()}"
        return text

    @classmethod
    def decode(cls, text: str, commit_time: float | None = None) -> ResumePoint:
        """Parse :meth:`encode`'s output; :class:`DecodeError` on anything else."""
        head, *parts = text.strip().split(";")
        match = _RESUME.match(head)
        if match is None:
            raise DecodeError(f"not a binlog resume point: {text!r}")
        file, pos = match["file"], int(match["pos"])
        handled: BinlogPosition | GtidPosition | None = None
        if match["end"] is not None:
            handled = BinlogPosition(file, int(match["end"]), int(match["row"]))
        hold = (match["hfile"], int(match["hpos"])) if match["hfile"] is not None else None
        gtid: GtidState | None = None
        hold_gtid: GtidState | None = None
        try:
            for part in parts:
                key, sep, value = part.partition("=")
                if not sep:
                    raise ValueError(f"{part!r} is not NAME=VALUE")
                if key in ("mariadb", "mysql") and gtid is None:
                    gtid = parse_state(key, value)
                elif key == "handled" and gtid is not None and handled is None:
                    txn, _, rest = value.rpartition("/")
                    event, _, row = rest.partition(".")
                    handled = GtidPosition(txn, gtid.add(txn).weight, int(event), int(row))
                elif key == "hold" and gtid is not None and hold_gtid is None:
                    hold_gtid = parse_state(gtid.flavour, value)
                else:
                    raise ValueError(f"unexpected {key!r}")
            return cls(file, pos, handled, commit_time, hold, gtid, hold_gtid)
        except (ValueError, DecodeError) as exc:
            raise DecodeError(f"invalid binlog resume point {text!r}: {exc}") from None

    def already_handled(self, position: BinlogPosition | GtidPosition) -> bool:
        """True for rows at or before ``handled`` (they were applied before the restart)."""
        handled = self.handled
        if isinstance(position, GtidPosition):
            if self.gtid is not None and self.gtid.contains(position.gtid):
                return True
            return (
                isinstance(handled, GtidPosition)
                and handled.gtid == position.gtid
                and (position.event, position.row) <= (handled.event, handled.row)
            )
        return isinstance(handled, BinlogPosition) and (position.pos, position.row) <= (
            handled.pos,
            handled.row,
        )

    def __str__(self) -> str:
        return self.encode()


@dataclass(frozen=True)
class StoredCheckpoint:
    """What a store returns: the encoded position and its times."""

    name: str
    position: str
    commit_time: float | None
    updated_at: float


class CheckpointStore(ABC):
    """Durable ``name -> position`` map.

    Contract: :meth:`save` returns only once the position survives a crash of
    this process (a committed row, an fsynced file). It raises
    :class:`TransientError` when the storage is unreachable; the caller keeps the
    old position and tries again later, which at worst repeats work. Stores are
    used from one thread at a time.
    """

    @abstractmethod
    def load(self, name: str) -> StoredCheckpoint | None:
        """The last saved checkpoint of *name*, or ``None`` if there is none."""

    @abstractmethod
    def save(self, name: str, position: str, commit_time: float | None = None) -> None:
        """Replace the checkpoint of *name*."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Forget the checkpoint of *name* (``listen --reset-checkpoint``)."""

    @abstractmethod
    def names(self, prefix: str) -> list[str]:
        """The names saved that start with *prefix*, sorted (the fan-out jobs of a pipeline)."""

    @property
    def width(self) -> int | None:
        """The longest position text :meth:`save` takes (``None``: no limit)."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Release connections or files."""

    def describe(self) -> str:
        """Where the checkpoint lives, for logs (never with a password)."""
        return type(self).__name__


class TableCheckpointStore(CheckpointStore):
    """The ``cachesync_checkpoint`` table in a MySQL/MariaDB database (the default).

    It may live in another database, or on another server, than the watched one
    (``checkpoint_url``), for example when the sidecar's binlog user may only
    read. The connecting user needs ``SELECT, INSERT, UPDATE, DELETE`` on the table
    and, unless the table exists already (:data:`CHECKPOINT_TABLE_SQL`), ``CREATE``.
    """

    def __init__(self, params: Mapping[str, Any], *, table: str = CHECKPOINT_TABLE) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_]+", table):
            raise ConfigurationError(f"checkpoint table name {table!r} is not a plain identifier")
        self._params = dict(params)
        self._table = table
        self._conn: Any = None
        self._ensured = False
        self._width = _POSITION_WIDTH

    def describe(self) -> str:
        p = self._params
        return f"table {p.get('database', '?')}.{self._table} on {p.get('host')}:{p.get('port')}"

    def _connection(self) -> Any:
        import pymysql

        if self._conn is None:
            try:
                self._conn = pymysql.connect(
                    **self._params, autocommit=True, connect_timeout=5, read_timeout=30,
                    write_timeout=30,
                )  # fmt: skip
            except (pymysql.MySQLError, OSError) as exc:
                raise self._error(exc, "unreachable") from exc
        if not self._ensured:
            self._ensure_table()
        return self._conn

    def _ensure_table(self) -> None:
        import pymysql

        with self._conn.cursor() as cur:
            cur.execute("SHOW TABLES LIKE %s", (self._table,))
            if cur.fetchone() is None:
                try:
                    cur.execute(CHECKPOINT_TABLE_SQL.replace(CHECKPOINT_TABLE, self._table, 1))
                except pymysql.MySQLError as exc:
                    if isinstance(server.translate(exc, "CREATE TABLE"), ConfigurationError):
                        raise ConfigurationError(
                            f"cannot create the checkpoint table ({self.describe()}): {exc}. "
                            "Create it once as an administrator with:\n"
                            + CHECKPOINT_TABLE_SQL
                            + "\nand grant SELECT, INSERT, UPDATE, DELETE on it, or point "
                            "checkpoint_url (CACHESYNC_CHECKPOINT_URL) elsewhere",
                            setting="checkpoint_url",
                        ) from None
                    raise
            cur.execute(
                "SELECT CHARACTER_MAXIMUM_LENGTH FROM information_schema.COLUMNS WHERE "
                "TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s AND COLUMN_NAME = 'position'",
                (self._table,),
            )
            row = cur.fetchone()
            if row is not None and row[0]:
                self._width = int(row[0])
        self._ensured = True

    def _error(self, exc: BaseException, trouble: str = "") -> CacheSyncError:
        """*exc* as :func:`server.translate` classifies it, worded for this store.

        Grants and passwords are the store's own setting (``checkpoint_url``), not
        the binlog source's, so a configuration error names that setting.
        """
        where = f"checkpoint store ({self.describe()})" + (f" {trouble}" if trouble else "")
        error = server.translate(exc, where)
        if isinstance(error, ConfigurationError):
            return ConfigurationError(
                f"checkpoint store ({self.describe()}): {exc}; the user needs "
                f"SELECT, INSERT, UPDATE, DELETE on {self._table}",
                setting="checkpoint_url",
                code=error.context.get("code"),
            )
        if isinstance(error, TransientError):
            return TransientError(f"{where}: {exc}", **error.context)
        return error

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[Any]:
        import pymysql

        try:
            with self._connection().cursor() as cur:
                yield cur
        except (pymysql.MySQLError, OSError) as exc:
            self.close()
            error = self._error(exc)
            if isinstance(error, TransientError):
                raise error from exc
            raise error from None

    def load(self, name: str) -> StoredCheckpoint | None:
        with self._cursor() as cur:
            cur.execute(
                f"SELECT position, commit_time, UNIX_TIMESTAMP(updated_at) "
                f"FROM {self._table} WHERE name = %s",
                (name,),
            )
            row = cur.fetchone()
        if row is None:
            return None
        return StoredCheckpoint(name, row[0], row[1], float(row[2]))

    def save(self, name: str, position: str, commit_time: float | None = None) -> None:
        self._connection()  # reads the column's width
        if len(position) > self._width:
            # Only MySQL GTID sets naming many server UUIDs get this long.
            raise ConfigurationError(
                f"checkpoint {name!r} ({len(position)} characters) does not fit the "
                f"{self._width} characters of {self._table}.position ({self.describe()}); "
                f"widen it: ALTER TABLE {self._table} MODIFY position VARCHAR(4096) NOT NULL, "
                "or use checkpoint_url=file:/path",
                setting="checkpoint_url",
            )
        with self._cursor() as cur:
            cur.execute(
                f"INSERT INTO {self._table} (name, position, commit_time, updated_at) "
                "VALUES (%s, %s, %s, UTC_TIMESTAMP(6)) ON DUPLICATE KEY UPDATE "
                "position = VALUES(position), commit_time = VALUES(commit_time), "
                "updated_at = VALUES(updated_at)",
                (name, position, commit_time),
            )

    def delete(self, name: str) -> None:
        with self._cursor() as cur:
            cur.execute(f"DELETE FROM {self._table} WHERE name = %s", (name,))

    def names(self, prefix: str) -> list[str]:
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        with self._cursor() as cur:
            cur.execute(
                f"SELECT name FROM {self._table} WHERE name LIKE %s ORDER BY name", (pattern,)
            )
            return [str(row[0]) for row in cur.fetchall()]

    @property
    def width(self) -> int | None:
        self._connection()  # reads the column's width
        return self._width

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


class FileCheckpointStore(CheckpointStore):
    """A JSON file ``{name: {position, commit_time, updated_at}}`` (the embedded default).

    Every save writes a temporary file in the same directory, fsyncs it, renames
    it over the old one and fsyncs the directory: a crash leaves either the old
    or the new file, never a torn one. An advisory lock serialises writers of
    different names sharing the file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def describe(self) -> str:
        return f"file {self.path}"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = open(self.path.with_name(self.path.name + ".lock"), "a+")  # noqa: SIM115
        except OSError as exc:
            raise TransientError(f"checkpoint store ({self.describe()}): {exc}") from exc
        with lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _read(self) -> dict[str, Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise TransientError(f"checkpoint store ({self.describe()}): {exc}") from exc
        try:
            data = json.loads(text)
        except ValueError:
            raise DecodeError(
                f"checkpoint file {self.path} is not JSON; fix or delete it "
                "(deleting restarts from the current binlog position)"
            ) from None
        if not isinstance(data, dict):
            raise DecodeError(f"checkpoint file {self.path} does not hold a JSON object")
        return data

    def _write(self, data: Mapping[str, Any]) -> None:
        directory = self.path.parent
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=directory)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    json.dump(data, fh, indent=1, sort_keys=True)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise TransientError(f"checkpoint store ({self.describe()}): {exc}") from exc

    def load(self, name: str) -> StoredCheckpoint | None:
        entry = self._read().get(name)
        if entry is None:
            return None
        try:
            return StoredCheckpoint(
                name, str(entry["position"]), entry.get("commit_time"), float(entry["updated_at"])
            )
        except (KeyError, TypeError, ValueError):
            raise DecodeError(f"checkpoint file {self.path}: malformed entry {name!r}") from None

    def save(self, name: str, position: str, commit_time: float | None = None) -> None:
        with self._locked():
            data = self._read()
            data[name] = {
                "position": position,
                "commit_time": commit_time,
                "updated_at": time.time(),
            }
            self._write(data)

    def delete(self, name: str) -> None:
        with self._locked():
            data = self._read()
            if data.pop(name, None) is not None:
                self._write(data)

    def names(self, prefix: str) -> list[str]:
        return sorted(n for n in self._read() if n.startswith(prefix))


def checkpoint_store(checkpoint_url: str | None, mysql_url: str | None) -> CheckpointStore:
    """The store named by ``checkpoint_url`` (``file:/path`` or ``mysql://``), else a table
    in the watched database (``mysql_url``)."""
    from ..connections import mysql_params

    if checkpoint_url is not None and checkpoint_url.startswith("file:"):
        path = checkpoint_url[len("file:") :]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise ConfigurationError(
                "setting checkpoint_url must be file:/path/to/checkpoint.json",
                setting="checkpoint_url",
            )
        return FileCheckpointStore(path)
    url = checkpoint_url or mysql_url
    if url is None:
        raise ConfigurationError(
            "no place for the checkpoint: set mysql_url (CACHESYNC_MYSQL_URL) or "
            "checkpoint_url (CACHESYNC_CHECKPOINT_URL)",
            setting="checkpoint_url",
        )
    setting = "checkpoint_url" if checkpoint_url else "mysql_url"
    params = mysql_params(url, setting=setting)
    if "database" not in params:
        raise ConfigurationError(
            f"setting {setting} ({redact_url(url)}) must name a database for the checkpoint table",
            setting=setting,
        )
    return TableCheckpointStore(params)
