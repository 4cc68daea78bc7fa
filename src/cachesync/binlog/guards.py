"""Start-up checks: refuse to stream from a server that would make cachesync lose changes.

Each problem found is reported with what to change, all of them at once, in one
:class:`~cachesync.errors.SourceConfigurationError`, before the sidecar reads a
single event:

* the binlog is off, not ``ROW``, not ``FULL`` row images (an UPDATE would not
  carry the old values, so the key of an old username could not be derived),
  or without column names (``binlog_row_metadata=FULL``). Only the GLOBAL row
  image is refused: a single session that turns it to ``MINIMAL``/``NOBLOB``
  is handled change by change (:mod:`cachesync.binlog.partial`);
* binlog compression (MariaDB ``log_bin_compress``, MySQL
  ``binlog_transaction_compression``), which python-mysql-replication cannot read;
* missing grants (``REPLICATION SLAVE``, ``REPLICATION CLIENT``, ``SELECT``);
* a ``server_id`` equal to the server's own;
* a checkpoint in a binlog file the server has purged: the changes in between
  are gone, and the only honest recovery is a reindex.

:func:`reachable_hold` is not a refusal: a checkpoint whose XA ``hold`` (see
:mod:`.xa`) is in a purged file still streams from its position, and the
prepared transactions it would have re-read are named in an ERROR instead.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import SourceConfigurationError
from . import server
from .checkpoint import ResumePoint

__all__ = ["Grants", "check_server", "purged_checkpoint_message", "reachable_hold"]

log = logging.getLogger("cachesync.binlog")

_GRANT = re.compile(r"^GRANT (?P<privileges>.+?) ON (?P<target>\S+) TO ", re.IGNORECASE)
_PARENS = re.compile(r"\([^)]*\)")


def _unquote(name: str) -> str:
    return name.strip().strip("`'\"")


@dataclass(frozen=True)
class Grants:
    """Privileges from ``SHOW GRANTS``: global ones and SELECT per schema/table.

    Grant lines may contain password hashes, so they are never logged or echoed.
    Privileges granted only through roles are not expanded (grant them directly
    to the sidecar user).
    """

    global_privileges: frozenset[str]
    select_schemas: frozenset[str]
    select_tables: frozenset[tuple[str, str]]

    @classmethod
    def parse(cls, lines: Iterable[str]) -> Grants:
        global_privileges: set[str] = set()
        schemas: set[str] = set()
        tables: set[tuple[str, str]] = set()
        for line in lines:
            match = _GRANT.match(line.strip())
            if match is None:
                continue
            # Column-level grants "SELECT (a, b)" do not allow reading whole rows.
            raw = _PARENS.sub("(columns)", match["privileges"])
            privileges = {p.strip().upper() for p in raw.split(",")}
            privileges = {p for p in privileges if "(COLUMNS)" not in p}
            if "ALL" in privileges or "ALL PRIVILEGES" in privileges:
                privileges.add("SELECT")
                privileges.add("ALL PRIVILEGES")
            db, _, table = match["target"].partition(".")
            db, table = _unquote(db), _unquote(table)
            if db == "*":
                global_privileges |= privileges
            elif "SELECT" in privileges:
                if table == "*":
                    schemas.add(db)
                else:
                    tables.add((db, table))
        return cls(frozenset(global_privileges), frozenset(schemas), frozenset(tables))

    def _any(self, *names: str) -> bool:
        return bool(self.global_privileges & {*names, "ALL PRIVILEGES"})

    @property
    def replication_slave(self) -> bool:
        return self._any("REPLICATION SLAVE", "REPLICATION REPLICA")

    @property
    def replication_client(self) -> bool:
        # MariaDB >= 10.5 shows REPLICATION CLIENT as BINLOG MONITOR.
        return self._any("REPLICATION CLIENT", "BINLOG MONITOR", "SUPER")

    def can_select(self, schema: str, table: str) -> bool:
        return (
            self._any("SELECT")
            or schema in self.select_schemas
            or (schema, table) in self.select_tables
        )


def _file_index(name: str) -> int | None:
    try:
        return int(name.rsplit(".", 1)[1])
    except (IndexError, ValueError):
        return None


def purged_checkpoint_message(name: str, point: ResumePoint, oldest: str | None) -> str:
    """What to say when the checkpointed binlog file no longer exists."""
    kept = f" (oldest kept: {oldest})" if oldest else ""
    return (
        f"checkpoint {name!r} points at binlog file {point.file}, which the server has "
        f"purged{kept}: the changes written in between are lost to cachesync. Recover: start "
        "the sidecar from the current position with `cachesync listen --reset-checkpoint`, "
        "then, while it runs, rebuild every search index with `cachesync reindex MODEL` and "
        "flush the cached keys of the watched models (or let their TTL expire). Keep binlogs "
        "longer than the longest sidecar outage (binlog_expire_logs_seconds)"
    )


def check_server(
    conn: object,
    *,
    tables: Sequence[tuple[str, str]],
    server_id: int,
    resume: ResumePoint | None = None,
    checkpoint_name: str = "default",
) -> None:
    """Raise :class:`SourceConfigurationError` listing every problem, or return quietly.

    *conn* is a PyMySQL connection of the sidecar's own user (grants are read
    for the current user); *tables* are the ``(schema, table)`` pairs it watches.
    """
    problems: list[str] = []
    log_bin = server.variable(conn, "log_bin")
    if (log_bin or "OFF").upper() not in ("ON", "1"):
        problems.append(
            "the binary log is off: start the server with --log-bin --binlog-format=ROW "
            "--binlog-row-image=FULL --binlog-row-metadata=FULL"
        )
    expected = (
        ("binlog_format", "ROW", "changes must be logged as rows, not statements"),
        (
            "binlog_row_image",
            "FULL",
            "updates and deletes must carry every old column value; one session's SET "
            "SESSION binlog_row_image is survived (its changes are re-read or reported as "
            "dead letters), but a whole server without FULL images would make every "
            "change a re-read and every changed key column unknowable",
        ),
        ("binlog_row_metadata", "FULL", "row events must carry column names"),
    )
    for name, wanted, why in expected:
        value = server.variable(conn, name)
        if value is None:
            problems.append(
                f"the server has no {name} setting ({why}); cachesync needs MySQL >= 8.0.14 "
                "or MariaDB >= 10.5"
            )
        elif value.upper() != wanted:
            problems.append(
                f"{name} is {value}, must be {wanted} ({why}): SET GLOBAL {name} = '{wanted}' "
                f"and set {name.replace('_', '-')}={wanted} in the server's configuration"
            )
    for name in ("log_bin_compress", "binlog_transaction_compression"):  # MariaDB, MySQL 8
        value = server.variable(conn, name)
        if value is not None and value.upper() in ("ON", "1"):
            problems.append(
                f"{name} is ON: python-mysql-replication cannot read compressed binlog "
                f"events; SET GLOBAL {name} = OFF"
            )
    own_id = server.variable(conn, "server_id")
    if own_id is not None and own_id.isdigit() and int(own_id) == server_id:
        problems.append(
            f"server_id {server_id} is the database server's own id; give the sidecar "
            "another one (--server-id / CACHESYNC_SERVER_ID)"
        )
    problems += _grant_problems(conn, tables)
    if resume is not None and not problems:
        problems += _position_problems(conn, resume, checkpoint_name)
    if problems:
        raise SourceConfigurationError(
            "cachesync cannot stream from this server:\n  - " + "\n  - ".join(problems)
        )


def _grant_problems(conn: object, tables: Sequence[tuple[str, str]]) -> list[str]:
    with server.translate_errors("SHOW GRANTS"), conn.cursor() as cur:  # type: ignore[attr-defined]
        cur.execute("SELECT CURRENT_USER()")
        row = cur.fetchone()
        account = str(row[0]) if row else "?"
        cur.execute("SHOW GRANTS")
        grants = Grants.parse(str(r[0]) for r in cur.fetchall())
    missing: list[str] = []
    if not grants.replication_slave:
        missing.append("REPLICATION SLAVE")
    if not grants.replication_client:
        missing.append("REPLICATION CLIENT")
    unreadable = [f"{s}.{t}" for s, t in tables if not grants.can_select(s, t)]
    if unreadable:
        missing.append("SELECT")
    if not missing:
        return []
    user, _, host = account.partition("@")
    problem = f"the MySQL user {account} lacks {', '.join(missing)}"
    if unreadable:
        problem += f" (SELECT needed on {', '.join(unreadable)})"
    problem += (
        f"; as an administrator run: GRANT SELECT, REPLICATION SLAVE, REPLICATION CLIENT "
        f"ON *.* TO '{user}'@'{host or '%'}'"
    )
    return [problem]


def _position_problems(conn: object, resume: ResumePoint, name: str) -> list[str]:
    from .positions import gtid_problems

    problems = gtid_problems(conn, resume, name)
    if problems is not None:  # a GTID checkpoint: file names are another server's, maybe
        return problems
    files = server.binary_logs(conn)
    by_name = {f.name: f for f in files}
    current = by_name.get(resume.file)
    if current is None:
        index, oldest = _file_index(resume.file), files[0].name if files else None
        oldest_index = _file_index(oldest) if oldest else None
        if index is not None and oldest_index is not None and index < oldest_index:
            return [purged_checkpoint_message(name, resume, oldest)]
        return [
            f"checkpoint {name!r} points at binlog file {resume.file}, which this server "
            f"does not have (files: {files[0].name if files else 'none'} .. "
            f"{files[-1].name if files else 'none'}); is mysql_url the right server? To start "
            "over from the current position use `cachesync listen --reset-checkpoint`, then "
            "`cachesync reindex MODEL`"
        ]
    if resume.pos > current.size:
        return [
            f"checkpoint {name!r} points at {resume.file}:{resume.pos}, beyond the end of the "
            f"file ({current.size} bytes); was the server's binlog reset? Recover with "
            "`cachesync listen --reset-checkpoint`, then `cachesync reindex MODEL`"
        ]
    return []


def reachable_hold(conn: object, resume: ResumePoint, name: str) -> ResumePoint:
    """*resume*, without its XA ``hold`` when the server no longer has the hold's file.

    Refusing to start would stop every other change too; the XA transactions
    prepared there can only be named: their COMMITs will be logged as ERRORs.
    """
    if resume.hold is None or resume.hold_gtid is not None:
        return resume  # a GTID hold is found (or found purged) by the source itself
    file, pos = resume.hold
    if any(f.name == file for f in server.binary_logs(conn)):
        return resume
    start = dataclasses.replace(resume, hold=None)
    log.error(
        "cachesync: checkpoint %r holds prepared XA transactions from %s:%d, which the server "
        "has purged; streaming from %s without them: any of them that commits is named in an "
        "ERROR and needs `cachesync verify --repair` or a reindex",
        name, file, pos, start,
    )  # fmt: skip
    return start
