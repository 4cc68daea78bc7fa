"""A private MariaDB primary with a GTID replica (``log_slave_updates``), for failover tests.

Both are throwaway servers of their own (the shared private MariaDB of
``services.py`` is never killed): datadirs under a directory the test owns,
ports derived from ``CACHESYNC_SERVICES_PORT_OFFSET`` so two checkouts never
collide. The commands are the verified ones of SERVICES.md ("A MariaDB
replica with GTID")::

    pair = ReplicaPair.start(tmp_path)       # primary + replica, replicating
    pair.wait_caught_up()                    # MASTER_GTID_WAIT on the replica
    pair.primary.kill()                      # SIGKILL
    pair.promote()                           # STOP SLAVE; RESET SLAVE ALL; read_only = 0
    pair.reset()                             # as freshly started again, for the next test
    pair.stop()

Installing and starting two servers costs several seconds on a loaded machine;
:meth:`ReplicaPair.reset` turns a used pair (even one whose primary was killed
and whose replica was promoted) back into the state :meth:`ReplicaPair.start`
leaves, so a module can share one pair between its tests.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pymysql

from tests.support import services as svc

__all__ = ["PRIMARY_PORT", "REPLICA_PORT", "MariaDBServer", "ReplicaPair"]

PRIMARY_PORT = 33071 + svc.PORT_OFFSET
REPLICA_PORT = 33081 + svc.PORT_OFFSET


class MariaDBServer:
    """One private ``mariadbd`` with the binlog on (ROW, FULL image, FULL metadata)."""

    def __init__(
        self, root: Path, *, port: int, server_id: int, binlog: str, extra: Sequence[str] = ()
    ) -> None:
        self.dir = root
        self.port = port
        self.server_id = server_id
        self.binlog = binlog
        self.extra = list(extra)
        self.pid: int | None = None

    @property
    def datadir(self) -> Path:
        return self.dir / "data"

    def url(self, user: str = "root", password: str = "", database: str = "") -> str:
        auth = f"{user}:{password}" if password else user
        return f"mysql://{auth}@{svc.HOST}:{self.port}/{database}"

    def start(self) -> None:
        server, install_db, _client = svc._mariadb_bins()
        if not (self.datadir / "mysql").is_dir():
            self.datadir.mkdir(parents=True, exist_ok=True)
            user = ["--user=root"] if os.geteuid() == 0 else []
            import subprocess

            subprocess.run(
                [
                    install_db, "--no-defaults", f"--datadir={self.datadir}", *user,
                    "--auth-root-authentication-method=normal", "--skip-test-db",
                ],
                check=True, capture_output=True, timeout=120,
            )  # fmt: skip
        if svc._port_open(self.port):
            raise svc.ServiceError(f"port {self.port} is in use; is another test pair running?")
        user = ["--user=root"] if os.geteuid() == 0 else []
        cmd = [
            server, "--no-defaults", *user,
            f"--datadir={self.datadir}", f"--socket={self.dir / 'mariadb.sock'}",
            f"--pid-file={self.dir / 'mariadbd.pid'}", f"--port={self.port}",
            f"--bind-address={svc.HOST}", f"--log-bin={self.datadir / self.binlog}",
            "--binlog-format=ROW", "--binlog-row-image=FULL", "--binlog-row-metadata=FULL",
            f"--server-id={self.server_id}", "--max-connections=200",
            *self.extra,
        ]  # fmt: skip
        self.pid = svc._spawn_detached(cmd, self.dir / "mariadb.log")
        svc._wait_until(
            f"mariadb on {self.port}",
            self._ready,
            90.0,
            alive=lambda: svc._pid_alive(self.pid),
            log=self.dir / "mariadb.log",
        )
        stmts = ["SET SESSION sql_log_bin = 0"]
        stmts += [f"CREATE DATABASE IF NOT EXISTS `{db}`" for db in svc.DATABASES]
        for host in ("127.0.0.1", "localhost"):
            account = f"'{svc.SIDECAR_USER}'@'{host}'"
            stmts.append(
                f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY '{svc.SIDECAR_PASSWORD}'"
            )
            stmts.append(f"GRANT {svc.SIDECAR_GRANTS} ON *.* TO {account}")
        for stmt in stmts:
            self.sql(stmt)

    def _ready(self) -> bool:
        try:
            return self.sql("SELECT 1") == [(1,)]
        except pymysql.MySQLError:
            return False

    def connect(self, database: str | None = None) -> Any:
        return pymysql.connect(
            host=svc.HOST, port=self.port, user="root", password="", database=database,
            autocommit=True, connect_timeout=5, read_timeout=60,
        )  # fmt: skip

    def sql(self, statement: str, args: Any = None, database: str | None = None) -> list[Any]:
        conn = self.connect(database)
        try:
            with conn.cursor() as cur:
                cur.execute(statement, args)
                return list(cur.fetchall())
        finally:
            conn.close()

    def gtid_binlog_pos(self) -> str:
        return str(self.sql("SELECT @@GLOBAL.gtid_binlog_pos")[0][0])

    def kill(self) -> None:
        """SIGKILL (a crashed primary), and wait until it is gone."""
        if self.pid is not None and svc._pid_alive(self.pid):
            os.kill(self.pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while svc._pid_alive(self.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        self.pid = None

    def stop(self) -> None:
        if self.pid is not None:
            svc._terminate(self.pid, None, 60.0)
            self.pid = None


class ReplicaPair:
    """A primary (server id 1, ``mysql-bin``) and its GTID replica (server id 8, ``replica-bin``)."""

    def __init__(self, root: Path) -> None:
        self.primary = MariaDBServer(
            root / "primary", port=PRIMARY_PORT, server_id=1, binlog="mysql-bin"
        )
        self.replica = MariaDBServer(
            root / "replica",
            port=REPLICA_PORT,
            server_id=8,
            binlog="replica-bin",
            extra=["--log-slave-updates", "--read-only"],
        )

    @classmethod
    def start(cls, root: Path) -> ReplicaPair:
        pair = cls(root)
        try:
            pair.primary.start()
            pair.replica.start()
            # A few rotations, so that file names and offsets differ on the two servers.
            for _ in range(3):
                pair.primary.sql("FLUSH BINARY LOGS")
            pair.attach()
        except BaseException:
            pair.stop()
            raise
        return pair

    def attach(self) -> None:
        """Replicate from the primary's current GTID state (MASTER_USE_GTID=slave_pos)."""
        position = self.primary.gtid_binlog_pos()
        for stmt in (
            f"SET GLOBAL gtid_slave_pos = '{position}'",
            f"CHANGE MASTER TO MASTER_HOST='{svc.HOST}', MASTER_PORT={self.primary.port}, "
            "MASTER_USER='root', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1",
            "START SLAVE",
        ):
            self.replica.sql(stmt)

    def wait_caught_up(self, timeout: int = 60) -> None:
        """Return once the replica applied everything the primary has logged so far."""
        position = self.primary.gtid_binlog_pos()
        result = self.replica.sql("SELECT MASTER_GTID_WAIT(%s, %s)", (position, timeout))
        if result[0][0] != 0:
            status = self.replica.sql("SHOW SLAVE STATUS")
            raise AssertionError(f"the replica did not reach {position}: {status}")

    def reset(self) -> None:
        """Back to the state :meth:`start` leaves, whatever a test did to the pair.

        The primary is restarted if it was killed (crash recovery keeps its data);
        replication is detached; the schemas tests created are dropped on both
        servers; both binlogs and GTID states are emptied (``RESET MASTER``), the
        primary's files rotated again, and the replica re-attached, read-only.
        A test then sees what a fresh pair shows: different file names and
        offsets on the two servers, the replica following the primary by GTID.
        """
        if self.primary.pid is None or not svc._pid_alive(self.primary.pid):
            self.primary.start()
        for stmt in ("STOP SLAVE", "RESET SLAVE ALL"):
            self.replica.sql(stmt)
        keep = {*svc.DATABASES, "information_schema", "mysql", "performance_schema", "sys"}
        for server in (self.primary, self.replica):
            for (schema,) in server.sql("SHOW DATABASES"):
                if schema not in keep:
                    server.sql(f"DROP DATABASE `{schema}`")
            server.sql("RESET MASTER")
        self.replica.sql("SET GLOBAL gtid_slave_pos = ''")
        self.replica.sql("SET GLOBAL read_only = 1")
        for _ in range(3):
            self.primary.sql("FLUSH BINARY LOGS")
        self.attach()

    def promote(self) -> None:
        """The replica becomes the primary: replication off, writable."""
        for stmt in ("STOP SLAVE", "RESET SLAVE ALL", "SET GLOBAL read_only = 0"):
            self.replica.sql(stmt)

    def stop(self) -> None:
        for server in (self.replica, self.primary):
            with contextlib.suppress(Exception):
                server.stop()
