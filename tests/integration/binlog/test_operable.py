"""Operable in production: pipelines isolated by default, loud start-up, clean command errors.

* two ``cachesync listen`` processes with nothing but name, models and URLs
  different run side by side on one MariaDB (derived server ids: no error
  4052), each deleting only in its own Redis and handing off only to its own
  retry topic;
* a sidecar whose URLs all carry passwords says at WARNING which service is
  unreachable and that it handed actions to the retry path, and never logs a
  password;
* ``reindex``/``verify`` on a declared model whose table is missing name it,
  and ``verify`` still reports the healthy model.
"""

from __future__ import annotations

import contextlib
import logging
import re
import subprocess
import sys
import time
from pathlib import Path

import pymysql
import pytest
import redis as redis_lib

from cachesync import Settings
from cachesync.binlog.preflight import check_services
from cachesync.config import derive_server_id
from cachesync.errors import CacheSyncError
from cachesync.kafka.client import read_topic
from tests.integration.binlog import models
from tests.integration.binlog.harness import ROOT, BinlogEnv, SidecarProcess, wait_for
from tests.support import services as svc

pytestmark = pytest.mark.services

PASSWORDS = ("sidecar-pw", "redis-secret", "es-secret")


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cachesync.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _records(bootstrap: str, topic: str) -> list[bytes]:
    """Record keys of *topic*; none when the topic was never created."""
    try:
        return [r.key or b"" for r in read_topic(bootstrap, topic, timeout=10)]
    except CacheSyncError:
        return []


@contextlib.contextmanager
def second_database(env: BinlogEnv, redis_db: int):  # type: ignore[no-untyped-def]
    """Another schema with its own ``users`` table and index, watched through Redis db *redis_db*."""
    schema = f"{env.schema[:40]}_b"
    env.sql(f"CREATE DATABASE `{schema}`")
    conn = pymysql.connect(**{**env.root, "database": schema}, autocommit=True)
    url = env.redis_url.rsplit("/", 1)[0] + f"/{redis_db}"
    client = redis_lib.Redis.from_url(url, socket_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute(models.USERS_DDL)
        yield schema, conn, url, client
    finally:
        conn.close()
        env.sql(f"DROP DATABASE IF EXISTS `{schema}`")
        with contextlib.suppress(Exception):
            env.es.indices.delete(index=models.index_name(schema), ignore_unavailable=True)
        with contextlib.suppress(Exception):
            for key in client.scan_iter(match=models.key_prefix(schema) + "*"):
                client.unlink(key)
        client.close()


def test_two_pipelines_run_side_by_side_with_default_ids_and_topics(
    binlog_env: BinlogEnv, kafka_bootstrap: str
) -> None:
    env = binlog_env
    a_env = env.settings_env(CACHESYNC_KAFKA_BOOTSTRAP=kafka_bootstrap)
    del a_env["CACHESYNC_SERVER_ID"]  # the defaults are under test
    with second_database(env, redis_db=8) as (b_schema, b_conn, b_redis_url, b_redis):
        b_env = {
            **a_env,
            "CACHESYNC_TEST_SCHEMA": b_schema,
            "CACHESYNC_NAME": b_schema,
            "CACHESYNC_MYSQL_URL": svc.sidecar_mysql_url(b_schema),
            "CACHESYNC_REDIS_URL": b_redis_url,
            "CACHESYNC_CHECKPOINT_URL": f"file:{env.tmp / 'b-checkpoint.json'}",
        }
        # B's index refuses the email field: a document Elasticsearch rejects must be
        # handed to B's retry path, and said so in B's log.
        env.es.indices.create(
            index=models.index_name(b_schema),
            mappings={
                "dynamic": "strict",
                "properties": {"username": {"type": "keyword"}, "nickname": {"type": "keyword"}},
            },
        )
        a = SidecarProcess(a_env, env.tmp / "a.log").start()
        b = SidecarProcess(b_env, env.tmp / "b.log").start()
        a.wait_for_log("streaming binlog from", timeout=60)
        b.wait_for_log("streaming binlog from", timeout=60)
        a_id, b_id = derive_server_id(env.schema, env.schema), derive_server_id(b_schema, b_schema)
        assert a_id != b_id
        assert f"server_id {a_id}, derived from name and database" in a.output()
        assert f"server_id {b_id}, derived from name and database" in b.output()

        # Each pipeline's keys, planted in BOTH Redis databases: each sidecar may
        # delete only in its own.
        a_foreign = models.user_keys(env.schema, 900, "a-only")
        b_foreign = models.user_keys(b_schema, 900, "b-only")
        env.set_keys(b_foreign)
        b_redis.mset({k: "x" for k in a_foreign})
        # "A while": both stream all along. Two readers with one server_id kick each
        # other off at every connect (error 4052) and reconnect within the 5 s backoff
        # cap, so 8 s of writes shows that flapping as surely as a longer run.
        deadline = time.monotonic() + 8
        n = 0
        while time.monotonic() < deadline:
            n += 1
            env.set_keys(env.keys(n, f"a{n}"))
            b_redis.mset({k: "stale" for k in models.user_keys(b_schema, n, f"b{n}")})
            env.sql(f"INSERT INTO users VALUES ({n}, 'a{n}', 'A', NULL, 0)")
            with b_conn.cursor() as cur:
                cur.execute(f"INSERT INTO users VALUES ({n}, 'b{n}', 'B', 'b{n}@x', 0)")
            time.sleep(0.5)
        wait_for(lambda: not env.existing(env.keys(n, f"a{n}")), 30, "A's last keys")
        wait_for(
            lambda: not b_redis.exists(*models.user_keys(b_schema, n, f"b{n}")), 30, "B's keys"
        )
        assert a.alive() and b.alive(), a.output() + b.output()
        for i in range(1, n + 1):
            assert not env.existing(env.keys(i, f"a{i}"))
            assert not b_redis.exists(*models.user_keys(b_schema, i, f"b{i}"))
        assert env.existing(b_foreign) == b_foreign, "A deleted B's keys"
        assert b_redis.exists(*a_foreign) == len(a_foreign), "B deleted A's keys"
        wait_for(lambda: "handed" in b.output(), 30, "B's hand-off warning")
        assert a.terminate() == 0 and b.terminate() == 0
    logs = a.output() + b.output()
    assert "4052" not in logs and "same server_id" not in logs
    handed = [line for line in b.output().splitlines() if "handed" in line]
    assert "WARNING" in handed[0]
    assert f"Kafka topic cachesync.{b_schema}.retry" in handed[0]
    assert f"document {models.index_name(b_schema)}/" in handed[0], handed[0]
    assert "handed" not in a.output()
    # B's failures are in B's topics only; A's stay empty.
    b_topics = _records(kafka_bootstrap, f"cachesync.{b_schema}.retry") + _records(
        kafka_bootstrap, f"cachesync.{b_schema}.dead-letter"
    )
    assert b_topics and all(models.index_name(b_schema).encode() in k for k in b_topics)
    assert _records(kafka_bootstrap, f"cachesync.{env.schema}.retry") == []


def test_no_log_line_of_a_sidecar_with_passwords_everywhere_contains_one(
    binlog_env: BinlogEnv, kafka_bootstrap: str
) -> None:
    env = binlog_env
    dead_redis = svc.free_port()
    es_with_password = env.es_url.replace("http://", "http://elastic:es-secret@")
    settings = env.settings_env(
        CACHESYNC_REDIS_URL=f"redis://default:redis-secret@127.0.0.1:{dead_redis}/0",
        CACHESYNC_ES_URL=es_with_password,
        CACHESYNC_KAFKA_BOOTSTRAP=kafka_bootstrap,
        CACHESYNC_OUTBOX_URL=env.sidecar_url,  # no INSERT grant: refusals are logged too
        CACHESYNC_LOG_LEVEL="DEBUG",
    )
    sidecar = SidecarProcess(settings, env.tmp / "secret.log", "--log-level", "DEBUG").start()
    try:
        sidecar.wait_for_log("streaming binlog from", timeout=60)
        env.sql("INSERT INTO users VALUES (1, 'ann', 'A', NULL, 0)")
        sidecar.wait_for_log("handed", timeout=60)
        env.sql("UPDATE users SET nickname = 'B' WHERE id = 1")
        time.sleep(2)
        assert sidecar.terminate() == 0
    finally:
        sidecar.kill()
    log = sidecar.output()
    warning = next(line for line in log.splitlines() if "Redis at" in line)
    assert "WARNING" in warning and "redis_url / CACHESYNC_REDIS_URL" in warning
    assert f"redis://default:***@127.0.0.1:{dead_redis}/0" in warning
    assert "is unreachable" in warning
    assert re.search(r"WARNING .*handed \d+ action\(s\) to the retry path", log)
    for password in PASSWORDS:
        assert password not in log, f"{password!r} appears in the sidecar log"


def test_start_up_names_every_unreachable_service(caplog: pytest.LogCaptureFixture) -> None:
    closed = svc.free_port()
    settings = Settings(
        redis_url=f"redis://:redis-secret@127.0.0.1:{closed}/0",
        es_url=f"http://elastic:es-secret@127.0.0.1:{closed}",
        kafka_bootstrap=f"127.0.0.1:{closed}",
    )
    with caplog.at_level(logging.WARNING, logger="cachesync.sidecar"):
        found = check_services(settings, needs_redis=True, needs_search=True, timeout=1)
    assert [u.setting for u in found] == ["redis_url", "es_url", "kafka_bootstrap"]
    lines = [r.getMessage() for r in caplog.records if r.name == "cachesync.sidecar"]
    assert len(lines) == 3
    for line, flag in zip(
        lines, ("CACHESYNC_REDIS_URL", "CACHESYNC_ES_URL", "CACHESYNC_KAFKA_BOOTSTRAP"), strict=True
    ):
        assert flag in line and "unreachable" in line and "starting anyway" in line
    assert "redis://:***@" in lines[0] and "http://elastic:***@" in lines[1]
    assert not any("secret" in line for line in lines)
    # only what the declarations need is asked
    assert check_services(settings, needs_redis=False, needs_search=False, timeout=1)[
        0
    ].setting == ("kafka_bootstrap")


GHOST_MODELS = """
import os
from cachesync import Projection, Sync, default_registry, resolve

schema = os.environ["CACHESYNC_TEST_SCHEMA"]
default_registry.add(resolve(
    "tests.ghosts.Ghost",
    Sync(keys=["ghost:{id}"], search=Projection(index=schema.lower() + "-ghosts", fields=["name"])),
    table="ghosts",
    schema=schema,
    columns={"id": "id", "name": "name"},
    primary_key=["id"],
))
"""


def test_a_missing_table_is_named_and_verify_reports_the_others(
    binlog_env: BinlogEnv, tmp_path: Path
) -> None:
    env = binlog_env
    (tmp_path / "cs_ghost_models.py").write_text(GHOST_MODELS)
    settings = env.settings_env(
        CACHESYNC_MODELS="tests.integration.binlog.models,cs_ghost_models",
        PYTHONPATH=f"{tmp_path}:{ROOT}",
    )
    env.sql("INSERT INTO users VALUES (1, 'ann', 'A', NULL, 0)")
    assert _cli(settings, "reindex", "User", "--quiet").returncode == 0
    missing = f"table {env.schema}.ghosts of model tests.ghosts.Ghost does not exist"
    for args in (("reindex", "Ghost"), ("reindex", "Ghost", "--quiet")):
        result = _cli(settings, *args)
        assert result.returncode == 2, result.stdout + result.stderr
        assert missing in result.stderr and "run the migrations" in result.stderr
        assert "Traceback" not in result.stdout + result.stderr
    result = _cli(settings, "verify")
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    assert "User -> " in result.stdout and "0 missing, 0 stale, 0 orphans" in result.stdout
    assert f"tests.ghosts.Ghost -> error: {missing}" in result.stdout
    assert "1 model(s) could not be verified" in result.stderr


def test_reindex_and_verify_name_an_unreachable_elasticsearch(binlog_env: BinlogEnv) -> None:
    closed = f"http://elastic:es-secret@127.0.0.1:{svc.free_port()}"
    settings = binlog_env.settings_env(CACHESYNC_ES_URL=closed)
    for args in (("verify",), ("verify", "User", "--sample", "3")):
        result = _cli(settings, *args)
        output = result.stdout + result.stderr
        assert result.returncode == 2, output
        assert "Traceback" not in output and "es-secret" not in output
        assert "es_url / CACHESYNC_ES_URL" in output, output
