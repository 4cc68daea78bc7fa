"""Plain SQL questions to the watched server, and the one PyMySQL error translator.

Used by the guards, ``status``, ``reindex``, the checkpoint table, the leader
lock and the binlog stream. Every PyMySQL error in :mod:`cachesync.binlog`
becomes a :mod:`cachesync.errors` error through :func:`translate`, so one list
says which server errors a retry cannot fix.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import CacheSyncError, SourceConfigurationError, SourceError, TransientError

__all__ = [
    "NOT_TRANSIENT",
    "BinlogFile",
    "binary_logs",
    "connect",
    "error_code",
    "gtid_flavour",
    "master_status",
    "master_status_row",
    "read_only",
    "translate",
    "translate_errors",
    "variable",
]

_PRIVILEGE = "missing privilege (the sidecar needs REPLICATION SLAVE, REPLICATION CLIENT, SELECT)"

#: Server errors a retry cannot fix: the grants or the server setup must change first.
#: Everything else a connection-level error class reports (OperationalError,
#: InterfaceError, socket errors) is transient. The binlog-only codes (1236, 4052)
#: cannot come from a plain query, so one list serves every caller.
NOT_TRANSIENT: Mapping[int, str] = {
    1044: "access denied to the database",
    1045: "access denied",
    1142: "missing table privilege",
    1143: "missing column privilege",
    1227: _PRIVILEGE,
    1370: "missing routine privilege",
    1236: "the server cannot send the binlog from the checkpoint",
    4052: (
        "another replica or reader uses the same server_id: give every pipeline its own "
        "(--server-id / CACHESYNC_SERVER_ID; by default it is derived from the pipeline's "
        "name and database, so two pipelines collide only when one sets it explicitly "
        "or both have the same name)"
    ),
}


@dataclass(frozen=True)
class BinlogFile:
    """One file of ``SHOW BINARY LOGS``."""

    name: str
    size: int


def error_code(exc: BaseException) -> int | None:
    """The server (or client, 2xxx) error number of a PyMySQL error, if it carries one."""
    import pymysql

    if not isinstance(exc, pymysql.MySQLError):
        return None  # an OSError's first argument is an errno, not a server code
    args = exc.args
    return args[0] if args and isinstance(args[0], int) and args[0] else None


def translate(exc: BaseException, what: str) -> CacheSyncError:
    """The cachesync error for *exc*, raised while doing *what* (a PyMySQL error or OSError).

    * a code in :data:`NOT_TRANSIENT`: :class:`SourceConfigurationError` (stop and
      fix the grants or the server; the message says which);
    * ``OperationalError``, ``InterfaceError``, any error without a server code,
      socket errors: :class:`TransientError` (reconnect and retry later);
    * any other server error (``ProgrammingError``, ``DataError`` ...): the server
      refused the statement and will refuse it again: :class:`SourceError`.

    The result carries ``code`` in its context (``None`` without one). The caller
    raises it, ``from exc`` for the transient ones so the cause stays in the log.
    """
    import pymysql

    code = error_code(exc)
    if code is not None:
        message = f"{what}: {exc.args[-1]} (error {code})"
        if code in NOT_TRANSIENT:
            return SourceConfigurationError(f"{message}: {NOT_TRANSIENT[code]}", code=code)
        if isinstance(exc, pymysql.OperationalError | pymysql.InterfaceError):
            return TransientError(message, code=code)
        return SourceError(message, code=code)
    if isinstance(exc, pymysql.InterfaceError | OSError):
        return TransientError(f"{what}: {exc}", code=code)
    # Without a server code the client lost track of the protocol (a garbled or
    # out-of-sequence packet): that connection is not to be trusted, a new one may work.
    return TransientError(f"{what}: {type(exc).__name__}: {exc}", code=code)


@contextlib.contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Raise PyMySQL errors and socket errors of the block as :func:`translate` says."""
    import pymysql

    try:
        yield
    except (pymysql.MySQLError, OSError) as exc:
        error = translate(exc, what)
        if isinstance(error, TransientError):
            raise error from exc
        raise error from None


def connect(params: Mapping[str, Any], *, what: str = "MySQL", **options: Any) -> Any:
    """A PyMySQL connection in autocommit mode with bounded timeouts."""
    import pymysql

    settings: dict[str, Any] = {
        "connect_timeout": 5,
        "read_timeout": 30,
        "write_timeout": 30,
        "autocommit": True,
        "charset": "utf8mb4",
    }
    settings.update(params)
    settings.update(options)
    with translate_errors(f"cannot connect to {what} at {params.get('host')}:{params.get('port')}"):
        return pymysql.connect(**settings)


def master_status(conn: Any) -> tuple[str, int]:
    """The server's current binlog file and offset (``SHOW MASTER STATUS``)."""
    row = master_status_row(conn)
    return str(row[0]), int(row[1])


def master_status_row(conn: Any) -> tuple[Any, ...]:
    """The whole ``SHOW MASTER STATUS`` row (MySQL's 5th column: ``Executed_Gtid_Set``)."""
    import pymysql

    with translate_errors("SHOW MASTER STATUS"), conn.cursor() as cur:
        try:
            cur.execute("SHOW BINARY LOG STATUS")  # MySQL >= 8.2 renamed it
        except pymysql.ProgrammingError:
            cur.execute("SHOW MASTER STATUS")
        row = cur.fetchone()
    if row is None:
        raise SourceConfigurationError(
            "the server has no binary log; start it with --log-bin --binlog-format=ROW "
            "--binlog-row-image=FULL --binlog-row-metadata=FULL"
        )
    return tuple(row)


def binary_logs(conn: Any) -> list[BinlogFile]:
    """The binlog files the server still has, oldest first (``SHOW BINARY LOGS``)."""
    with translate_errors("SHOW BINARY LOGS"), conn.cursor() as cur:
        cur.execute("SHOW BINARY LOGS")
        return [BinlogFile(str(r[0]), int(r[1])) for r in cur.fetchall()]


def variable(conn: Any, name: str) -> str | None:
    """A global server variable as text, or ``None`` when the server has no such variable."""
    with translate_errors(f"reading @@{name}"), conn.cursor() as cur:
        cur.execute("SHOW GLOBAL VARIABLES LIKE %s", (name,))
        row = cur.fetchone()
    return None if row is None else str(row[1])


def gtid_flavour(conn: Any) -> str | None:
    """``"mariadb"`` (GTIDs always on), ``"mysql"`` with ``gtid_mode=ON``, else ``None``."""
    with translate_errors("SELECT VERSION()"), conn.cursor() as cur:
        cur.execute("SELECT VERSION()")
        row = cur.fetchone()
    if row is not None and "mariadb" in str(row[0]).lower():
        return "mariadb"
    mode = variable(conn, "gtid_mode")
    return "mysql" if mode is not None and mode.upper() == "ON" else None


def read_only(conn: Any) -> bool:
    """Whether the server refuses writes (``@@read_only``): a replica, or a demoted primary."""
    with translate_errors("SELECT @@read_only"), conn.cursor() as cur:
        cur.execute("SELECT @@GLOBAL.read_only")
        row = cur.fetchone()
    return bool(row and int(row[0]))
