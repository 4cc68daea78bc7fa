"""Start-up guards refuse servers and users that would make the sidecar lose changes."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pymysql
import pytest

from cachesync.binlog import BinlogSource, FileCheckpointStore, ResumePoint, check_server
from cachesync.binlog.guards import Grants
from cachesync.errors import SourceConfigurationError
from tests.integration.binlog.harness import BinlogEnv, running, wait_for

pytestmark = pytest.mark.services


def _check(env: BinlogEnv, conn: object, **kwargs: object) -> None:
    check_server(conn, tables=[(env.schema, "users")], server_id=env.server_id, **kwargs)  # type: ignore[arg-type]


@contextlib.contextmanager
def _global(env: BinlogEnv, name: str, value: str) -> Iterator[None]:
    """SET GLOBAL for as short as possible, always restored (other sessions share the server)."""
    (previous,) = env.sql(f"SELECT @@GLOBAL.{name}")[0]
    env.sql(f"SET GLOBAL {name} = %s", (value,))
    try:
        yield
    finally:
        env.sql(f"SET GLOBAL {name} = %s", (previous,))


@contextlib.contextmanager
def _user(env: BinlogEnv, *grants: str) -> Iterator[dict[str, object]]:
    name = f"csbl_{uuid.uuid4().hex[:8]}"
    accounts = [f"'{name}'@'127.0.0.1'", f"'{name}'@'localhost'"]
    for account in accounts:
        env.sql(f"CREATE USER {account} IDENTIFIED BY 'weak-pw'")
        for grant in grants:
            env.sql(f"GRANT {grant} TO {account}")
    try:
        params = {k: v for k, v in env.root.items() if k != "database"}
        yield {**params, "user": name, "password": "weak-pw"}
    finally:
        for account in accounts:
            env.sql(f"DROP USER IF EXISTS {account}")


def test_least_privilege_user_passes(binlog_env: BinlogEnv) -> None:
    conn = pymysql.connect(**binlog_env.sidecar_params)
    try:
        _check(binlog_env, conn)
    finally:
        conn.close()


def test_refuses_statement_binlog_format(binlog_env: BinlogEnv) -> None:
    conn = pymysql.connect(**binlog_env.sidecar_params)
    try:
        with (
            _global(binlog_env, "binlog_format", "STATEMENT"),
            pytest.raises(SourceConfigurationError) as caught,
        ):
            _check(binlog_env, conn)
    finally:
        conn.close()
    assert "binlog_format is STATEMENT, must be ROW" in str(caught.value)
    assert "SET GLOBAL binlog_format = 'ROW'" in str(caught.value)


@pytest.mark.parametrize("image", ["MINIMAL", "NOBLOB"])
def test_refuses_a_global_partial_row_image(binlog_env: BinlogEnv, image: str) -> None:
    """Only the GLOBAL setting: one session's partial images are re-read or reported."""
    conn = pymysql.connect(**binlog_env.sidecar_params)
    try:
        with (
            _global(binlog_env, "binlog_row_image", image),
            pytest.raises(SourceConfigurationError) as caught,
        ):
            _check(binlog_env, conn)
    finally:
        conn.close()
    message = str(caught.value)
    assert f"binlog_row_image is {image}, must be FULL" in message
    assert "one session's SET SESSION binlog_row_image is survived" in message


def test_refuses_missing_grants(binlog_env: BinlogEnv) -> None:
    env = binlog_env
    with _user(env, f"SELECT ON `{env.schema}`.* ") as params:
        conn = pymysql.connect(**params)
        try:
            with pytest.raises(SourceConfigurationError) as caught:
                _check(env, conn)
        finally:
            conn.close()
    message = str(caught.value)
    assert "lacks REPLICATION SLAVE, REPLICATION CLIENT" in message
    assert "GRANT SELECT, REPLICATION SLAVE, REPLICATION CLIENT ON *.*" in message
    assert "weak-pw" not in message and "*" + "9" not in message  # no password, no hash

    with _user(env, "REPLICATION SLAVE, REPLICATION CLIENT ON *.*", "SELECT ON mysql.*") as params:
        conn = pymysql.connect(**params)
        try:
            with pytest.raises(
                SourceConfigurationError, match=rf"SELECT needed on {env.schema}\.users"
            ):
                _check(env, conn)
        finally:
            conn.close()


def test_refuses_own_server_id(binlog_env: BinlogEnv) -> None:
    env = binlog_env
    (own,) = env.sql("SELECT @@server_id")[0]
    conn = pymysql.connect(**env.sidecar_params)
    try:
        with pytest.raises(SourceConfigurationError, match="database server's own id"):
            check_server(conn, tables=[(env.schema, "users")], server_id=int(own))
    finally:
        conn.close()


def test_purged_checkpoint_file_says_how_to_recover(binlog_env: BinlogEnv) -> None:
    """A checkpoint in a binlog file older than the oldest the server keeps.

    The server is shared with concurrently running tests whose readers sit in
    older files, so the test does not PURGE: it names the file just before the
    oldest one, which is exactly what a purge leaves behind (SHOW BINARY LOGS no
    longer lists it, the dump answers error 1236).
    """
    env = binlog_env
    oldest = str(env.sql("SHOW BINARY LOGS")[0][0])
    stem, _, number = oldest.rpartition(".")
    file, pos = f"{stem}.{max(0, int(number) - 1):0{len(number)}d}", 4
    newest, _ = env.master_status()

    # The stream itself, without the guards, reports the same with the same advice.
    source = BinlogSource(
        env.sidecar_params, env.registry(), server_id=env.server_id, start=ResumePoint(file, pos)
    )
    with source, pytest.raises(SourceConfigurationError, match="--reset-checkpoint"):
        source.poll(10, 5.0)

    store = FileCheckpointStore(env.tmp / "checkpoint.json")
    store.save(env.schema, ResumePoint(file, pos).encode())
    sidecar = env.sidecar(store=store)
    with running(sidecar, wait_leading=False) as errors:
        wait_for(lambda: bool(errors), 30, "the sidecar to refuse to start")
    assert errors and isinstance(errors[0], SourceConfigurationError), errors
    message = str(errors[0])
    assert f"binlog file {file}, which the server has purged" in message
    assert "cachesync listen --reset-checkpoint" in message
    assert "cachesync reindex MODEL" in message
    assert sidecar.saved is None

    # The documented recovery starts from the current position.
    recovered = env.sidecar(store=store)
    recovered._reset = True
    with running(recovered):
        env.sync_point()
    stored = store.load(env.schema)
    assert stored is not None and ResumePoint.decode(stored.position).file == newest


def test_grant_parsing() -> None:
    grants = Grants.parse(
        [
            "GRANT SELECT, REPLICATION SLAVE, BINLOG MONITOR ON *.* TO `u`@`h` "
            "IDENTIFIED BY PASSWORD '*9FA71DE51C9504B22417E16467AD87D22E85BD58'",
        ]
    )
    assert grants.replication_slave and grants.replication_client and grants.can_select("a", "b")
    mysql8 = Grants.parse(
        [
            "GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO `u`@`%`",
            "GRANT SELECT ON `shop`.* TO `u`@`%`",
            "GRANT SELECT (`id`, `name`) ON `other`.`users` TO `u`@`%`",
            "GRANT SELECT ON `third`.`users` TO `u`@`%`",
        ]
    )
    assert mysql8.replication_slave and mysql8.replication_client
    assert mysql8.can_select("shop", "users") and mysql8.can_select("third", "users")
    assert not mysql8.can_select("other", "users")  # column grants do not read whole rows
    root = Grants.parse(["GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost` WITH GRANT OPTION"])
    assert root.replication_slave and root.replication_client and root.can_select("x", "y")
    assert not Grants.parse(["GRANT USAGE ON *.* TO `x`@`%`"]).replication_slave
