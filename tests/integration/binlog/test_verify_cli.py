"""``cachesync verify`` as a user runs it: Redis too, the nines, honest repairs, exit statuses.

* clean: exit 0 and ``N of N consistent (100%)``;
* a stale document, a missing one, an orphan document and two orphan keys (a
  renamed row's old key, a deleted row's key): exit 1, each named, ``(9x.x%)``;
* ``--repair``: ``6 of 6 repaired``, exit 0, and the next verify is clean;
* a document whose external version is ahead of the table (the issue's case:
  ``1 stale ... 1 repaired`` and stale again next time): repaired for good;
* ``verify MODEL`` for a model with nothing to verify, or keys but no
  ``redis_url``: one line naming why, exit 2.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.binlog.harness import ROOT, BinlogEnv

pytestmark = pytest.mark.services


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cachesync.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_verify_checks_redis_prints_the_nines_and_repairs_for_good(binlog_env: BinlogEnv) -> None:
    env = binlog_env
    settings = env.settings_env()
    env.sql(
        "INSERT INTO users VALUES (1, 'ann', 'A', NULL, 0), (2, 'bo', 'B', NULL, 0), "
        "(3, 'cy', 'C', NULL, 0)"
    )
    assert _cli(settings, "reindex", "User", "--quiet").returncode == 0
    env.set_keys(env.keys(1, "ann") + env.keys(2, "bo"), "cached")
    clean = _cli(settings, "verify")
    output = clean.stdout + clean.stderr
    assert clean.returncode == 0, output
    assert "0 missing, 0 stale, 0 orphans" in clean.stdout
    assert "keys: 4 rows, 8 keys, 4 cached, 0 stale, 0 orphans; values not compared" in output
    # 4 documents (sentinel included) and 4 cached keys, each consistent
    assert "8 of 8 consistent (100%)" in clean.stdout

    env.sql("UPDATE users SET user_name = 'ann2' WHERE id = 1")  # nobody streams it
    env.sql("DELETE FROM users WHERE id = 3")
    env.sql("INSERT INTO users VALUES (4, 'di', 'D', NULL, 0)")
    env.es.index(index=env.index, id="2", document={"username": "bo", "nickname": "OLD"})
    env.es.indices.refresh(index=env.index)
    env.set_keys([f"{env.schema}:user:3"], "cached")  # the deleted row's key
    drift = _cli(settings, "verify", "User")
    output = drift.stdout + drift.stderr
    assert drift.returncode == 1, output
    assert "1 missing, 2 stale, 1 orphans" in drift.stdout  # 4 missing; 1 renamed, 2 stale; 3 gone
    assert f"orphans: {env.schema}:user:3, {env.schema}:user:by-name:ann" in drift.stdout
    match = re.search(r"(\d+) of (\d+) consistent \((\d+\.\d+)%\)", drift.stdout)
    assert match is not None, drift.stdout
    consistent, total = int(match[1]), int(match[2])
    assert total - consistent == 6 and float(match[3]) < 100

    repaired = _cli(settings, "verify", "--repair")
    output = repaired.stdout + repaired.stderr
    assert repaired.returncode == 0, output
    assert "6 of 6 repaired" in repaired.stdout
    again = _cli(settings, "verify")
    assert again.returncode == 0, again.stdout + again.stderr
    assert env.existing([f"{env.schema}:user:3", f"{env.schema}:user:by-name:ann"]) == []

    # A document written with a version far ahead of this binlog (another server's).
    env.es.index(
        index=env.index,
        id="2",
        document={"username": "bo", "nickname": "AHEAD"},
        version=2**62 + 2**61,  # above any version this server's GTID positions give
        version_type="external",
        refresh=True,
    )
    ahead = _cli(settings, "verify", "--repair")
    assert ahead.returncode == 0, ahead.stdout + ahead.stderr
    assert "1 repaired (1 written above a newer stored version)" in ahead.stdout
    assert "ahead: 2" in ahead.stdout
    final = _cli(settings, "verify")
    assert final.returncode == 0, final.stdout + final.stderr
    assert env.documents()["2"]["nickname"] == "B"


NOTHING_MODELS = """
import os
from cachesync import Sync, default_registry, resolve

schema = os.environ["CACHESYNC_TEST_SCHEMA"]
default_registry.add(resolve(
    "tests.nothing.Counter",
    Sync(invalidates=lambda before, after: ["counter:all"]),
    table="users", schema=schema,
    columns={"id": "id"}, primary_key=["id"],
))
default_registry.add(resolve(
    "tests.nothing.KeysOnly",
    Sync(keys=["keysonly:{id}"]),
    table="users_keys_only", schema=schema,
    columns={"id": "id"}, primary_key=["id"],
))
"""


def test_verify_of_a_model_with_nothing_to_verify_says_so(
    binlog_env: BinlogEnv, tmp_path: Path
) -> None:
    (tmp_path / "cs_nothing_models.py").write_text(NOTHING_MODELS)
    settings = binlog_env.settings_env(
        CACHESYNC_MODELS="cs_nothing_models", PYTHONPATH=f"{tmp_path}:{ROOT}"
    )
    result = _cli(settings, "verify", "Counter")
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "nothing to verify: tests.nothing.Counter declares no search projection and no keys" in (
        result.stderr
    )
    assert "Traceback" not in output
    without_redis = dict(settings)
    without_redis.pop("CACHESYNC_REDIS_URL")
    for args in (("verify", "KeysOnly"), ("verify",)):
        result = _cli(without_redis, *args)
        output = result.stdout + result.stderr
        assert result.returncode == 2, (args, output)
        assert "redis_url (--redis-url / CACHESYNC_REDIS_URL) is not set" in result.stderr, output
        assert "Traceback" not in output


LOADER = """
import json


def load(template, row):
    if "by-name" in template.text:
        return None  # this application caches only user:{id}
    return json.dumps({"username": row["username"], "nickname": row["nickname"]}).encode()


def broken(template, row):
    raise RuntimeError("no cache for you")
"""


def test_verify_compares_cached_values_with_a_loader(binlog_env: BinlogEnv, tmp_path: Path) -> None:
    env = binlog_env
    (tmp_path / "cs_verify_loader.py").write_text(LOADER)
    settings = env.settings_env(PYTHONPATH=f"{tmp_path}:{ROOT}")
    env.sql("INSERT INTO users VALUES (1, 'ann', 'A', NULL, 0), (2, 'bo', 'B', NULL, 0)")
    assert _cli(settings, "reindex", "User", "--quiet").returncode == 0
    prefix = f"{env.schema}:user"
    env.redis.set(f"{prefix}:1", '{"username": "ann", "nickname": "A"}')
    env.redis.set(f"{prefix}:2", '{"username": "bo", "nickname": "OLD"}')  # stale
    env.redis.set(f"{prefix}:by-name:bo", "whatever the application keeps")
    result = _cli(settings, "verify", "User", "--loader", "cs_verify_loader:load")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "3 cached, 1 stale, 0 orphans; values compared" in result.stdout
    assert f"stale: {prefix}:2" in result.stdout
    repaired = _cli(settings, "verify", "User", "--loader", "cs_verify_loader:load", "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "1 of 1 repaired" in repaired.stdout
    assert env.existing([f"{prefix}:2", f"{prefix}:1"]) == [f"{prefix}:1"]

    for loader, message in (
        ("cs_verify_loader", "expected MODULE:FUNCTION"),
        ("cs_no_such_module:load", "no module named 'cs_no_such_module'"),
        ("cs_verify_loader:nope", "module cs_verify_loader has no 'nope'"),
        ("cs_verify_loader:broken", "the loader raised RuntimeError: no cache for you"),
    ):
        env.redis.set(f"{prefix}:2", "x")
        bad = _cli(settings, "verify", "User", "--loader", loader)
        output = bad.stdout + bad.stderr
        assert bad.returncode == 2, (loader, output)
        assert message in output and "Traceback" not in output, (loader, output)
