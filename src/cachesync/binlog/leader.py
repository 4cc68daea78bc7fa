"""One leader per pipeline: ``GET_LOCK`` on a connection of the sidecar's own.

A second sidecar with the same pipeline name blocks in ``GET_LOCK`` as a
standby; the server releases the lock the moment the leader's connection dies
(SIGKILL, crash, network), and the standby then starts from the checkpoint.
``GET_LOCK`` needs no privilege, which keeps the sidecar's grants minimal.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Mapping
from typing import Any

from ..errors import CacheSyncError, LeadershipLost, TransientError
from . import server

__all__ = ["LeaderLock", "lock_name"]


def lock_name(database: str | None, pipeline: str) -> str:
    """``cachesync:<database>:<pipeline>``, hashed to fit MySQL's 64-character lock names."""
    name = f"cachesync:{database or '-'}:{pipeline}"
    if len(name) <= 64:
        return name
    return "cachesync:" + hashlib.sha1(name.encode()).hexdigest()


class LeaderLock:
    """``GET_LOCK`` on a connection of its own; the lock lives exactly as long as it.

    The server drops the lock when the connection closes for any reason, which
    is what makes failover fast. Errors are those of :func:`server.translate`:
    connection trouble is :class:`TransientError` (and the connection is dropped,
    so the next call reconnects), which :meth:`check` reports as
    :class:`LeadershipLost`. Used from one thread at a time.
    """

    def __init__(self, params: Mapping[str, Any], name: str, *, session_timeout: int = 30) -> None:
        self._params = dict(params)
        self.name = name
        self.session_timeout = session_timeout
        self._conn: Any = None

    def _query(self, sql: str, *args: Any) -> Any:
        import pymysql

        try:
            if self._conn is None:
                conn = server.connect(self._params, what="MySQL (leader lock)")
                self._conn = conn
                with conn.cursor() as cur:
                    cur.execute("SET SESSION wait_timeout = %s", (self.session_timeout,))
            with self._conn.cursor() as cur:
                cur.execute(sql, args)
                row = cur.fetchone()
            return row[0] if row else None
        except CacheSyncError:
            self._drop()
            raise
        except (pymysql.MySQLError, OSError) as exc:
            self._drop()
            raise server.translate(exc, f"leader lock {self.name!r}") from exc

    def try_acquire(self, wait: float) -> bool:
        """One ``GET_LOCK`` attempt waiting up to *wait* seconds."""
        return bool(self._query("SELECT GET_LOCK(%s, %s)", self.name, max(0, int(wait))))

    def check(self) -> None:
        """Raise :class:`LeadershipLost` unless this connection still holds the lock."""
        try:
            held = self._query("SELECT IS_USED_LOCK(%s) = CONNECTION_ID()", self.name)
        except TransientError as exc:
            raise LeadershipLost(f"leader lock {self.name!r} lost: {exc}") from exc
        if not held:
            self._drop()
            raise LeadershipLost(f"leader lock {self.name!r} is no longer held")

    def holder(self) -> int | None:
        """The connection id holding the lock, or ``None``."""
        value = self._query("SELECT IS_USED_LOCK(%s)", self.name)
        return None if value is None else int(value)

    def release(self) -> None:
        """Release the lock explicitly (best effort) and close the connection."""
        if self._conn is not None:
            with contextlib.suppress(CacheSyncError):
                self._query("SELECT RELEASE_LOCK(%s)", self.name)
            self._drop()

    def close(self) -> None:
        """Close the connection without releasing explicitly (the server drops the lock)."""
        self._drop()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
