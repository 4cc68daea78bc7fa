"""Plain SQL questions to the watched server: binlog position, binlog files, variables.

Used by the guards, ``status``, ``reindex`` and the leader lock. PyMySQL errors
become :mod:`cachesync.errors` here: connection problems are
:class:`TransientError`, missing privileges :class:`SourceConfigurationError`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import SourceConfigurationError, TransientError

__all__ = ["BinlogFile", "binary_logs", "connect", "master_status", "translate_errors", "variable"]

#: Privilege errors: retrying cannot help, the grants must change.
PRIVILEGE_ERRORS = frozenset({1044, 1045, 1142, 1143, 1227, 1370})


@dataclass(frozen=True)
class BinlogFile:
    """One file of ``SHOW BINARY LOGS``."""

    name: str
    size: int


@contextlib.contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Turn PyMySQL errors raised inside the block into cachesync errors naming *what*."""
    import pymysql

    try:
        yield
    except pymysql.OperationalError as exc:
        code = exc.args[0] if exc.args else 0
        if code in PRIVILEGE_ERRORS:
            raise SourceConfigurationError(f"{what}: {exc.args[-1]} (error {code})") from None
        raise TransientError(f"{what}: {exc.args[-1]} (error {code})") from exc
    except (pymysql.InterfaceError, OSError) as exc:
        raise TransientError(f"{what}: {exc}") from exc


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
    return str(row[0]), int(row[1])


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
