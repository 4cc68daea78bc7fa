"""Bad input to ``cachesync ...`` is one line naming the culprit, exit status 2, no traceback.

These run the real command line in a child process and need no service: every
case fails before anything is contacted, or contacts a closed port.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.services import free_port

ROOT = Path(__file__).resolve().parents[2]

BAD_MODULES = {
    "cs_syntax": "x = 1\ndef broken(:\n    pass\n",
    "cs_raises": "import os\nraise RuntimeError('boom at import')\n",
    "cs_needs_dep": "import cs_not_installed_anywhere\n",
}


def run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    for name, text in BAD_MODULES.items():
        (tmp_path / f"{name}.py").write_text(text)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CACHESYNC_")}
    environ["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "cachesync.cli", *args],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_clean(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == 2, output
    for text in expected:
        assert text in output, (text, output)


# A closed port: nothing is ever contacted before the failure under test.
DB = "mysql://app:pw@127.0.0.1:9/shop"

COMMANDS = [
    ("listen",),
    ("reindex", "User"),
    ("verify",),
    ("retry",),
    ("relay", "--once"),
    ("dlq", "list"),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("cs_syntax", ["cannot import 'cs_syntax'", "SyntaxError", "cs_syntax.py, line 2"]),
        (
            "cs_raises",
            ["cannot import 'cs_raises'", "RuntimeError: boom at import", "cs_raises.py:2"],
        ),
        ("cs_needs_dep", ["'cs_needs_dep'", "imports 'cs_not_installed_anywhere'"]),
        ("cs_no_such_module", ["no module named 'cs_no_such_module'", "PYTHONPATH"]),
    ],
    ids=["syntax-error", "raises-at-import", "missing-dependency", "missing-module"],
)
def test_a_bad_models_module_is_named(
    tmp_path: Path, command: tuple[str, ...], module: str, expected: list[str]
) -> None:
    result = run(
        tmp_path,
        *command,
        "--models",
        module,
        "--mysql-url",
        DB,
        "--redis-url",
        "redis://127.0.0.1:9/0",
        "--kafka-bootstrap",
        "127.0.0.1:9",
    )
    assert_clean(result, "setting models (--models / CACHESYNC_MODELS)", *expected)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("verify", "--sample", "-5"), "argument --sample: must be >= 1, got -5"),
        (("verify", "--sample", "0"), "argument --sample: must be >= 1, got 0"),
        (("verify", "--sample", "many"), "argument --sample: expected an integer, got 'many'"),
        (("reindex", "User", "--batch-size", "0"), "argument --batch-size: must be >= 1, got 0"),
        (("relay", "--batch-size", "0"), "argument --batch-size: must be >= 1"),
        (("relay", "--poll-interval", "0"), "argument --poll-interval: must be > 0"),
        (("retry", "--partitions", "0"), "argument --partitions: must be >= 1"),
        (("retry", "--session-timeout-ms", "5"), "argument --session-timeout-ms: must be >= 1000"),
        (("dlq", "list", "--since", "yesterday"), "argument --since: expected an ISO 8601 time"),
        (("listen", "--server-id", "0"), "setting server_id must be in 1..4294967295"),
        (("listen", "--batch", "huge"), "batch preset 'huge' is unknown"),
    ],
)
def test_an_out_of_range_option_is_named(
    tmp_path: Path, args: tuple[str, ...], expected: str
) -> None:
    assert_clean(run(tmp_path, *args, CACHESYNC_MYSQL_URL=DB), expected)


def test_listen_without_redis_names_the_setting(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        "listen",
        CACHESYNC_MYSQL_URL=DB,
        CACHESYNC_MODELS="tests.integration.binlog.models",
        CACHESYNC_TEST_SCHEMA="shop",
        CACHESYNC_ES_URL="http://127.0.0.1:9",
    )
    assert_clean(result, "declare cache keys but redis_url (--redis-url / CACHESYNC_REDIS_URL)")


def test_a_config_file_with_an_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    config = tmp_path / "cachesync.toml"
    config.write_text('name = "orders"\nredis_ulr = "redis://cache:6379/0"\n')
    for command in [*COMMANDS, ("status",)]:
        result = run(tmp_path, *command, "--config", str(config))
        assert_clean(result, f"config file {config}: unknown key 'redis_ulr'", "'redis_url'")
    result = run(tmp_path, "status", CACHESYNC_CONFIG=str(config))
    assert_clean(result, "unknown key 'redis_ulr'")


def test_the_config_file_supplies_settings_that_flags_override(tmp_path: Path) -> None:
    config = tmp_path / "cachesync.toml"
    port = free_port()
    config.write_text(f'mysql_url = "mysql://app:file-secret@127.0.0.1:{port}/shop"\n')
    result = run(tmp_path, "status", "--config", str(config))
    assert_clean(result, f"cannot connect to MySQL at 127.0.0.1:{port}")
    assert "file-secret" not in result.stdout + result.stderr
    other = free_port()
    result = run(
        tmp_path, "status", "--config", str(config), "--mysql-url", f"mysql://a@127.0.0.1:{other}/x"
    )
    assert_clean(result, f"127.0.0.1:{other}")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("status",), "cannot connect to MySQL"),
        (("verify",), "cannot connect to MySQL (mysql_url / CACHESYNC_MYSQL_URL)"),
        (("dlq", "list", "--kafka-bootstrap", "127.0.0.1:{port}"), "kafka_bootstrap"),
        (("retry", "--kafka-bootstrap", "127.0.0.1:{port}"), "no Kafka broker at 127.0.0.1"),
    ],
)
def test_an_unreachable_service_is_named(
    tmp_path: Path, args: tuple[str, ...], expected: str
) -> None:
    port = free_port()
    argv = [a.format(port=port) for a in args]
    result = run(
        tmp_path,
        *argv,
        CACHESYNC_MYSQL_URL=f"mysql://app:s3cret@127.0.0.1:{port}/shop",
        CACHESYNC_REDIS_URL="redis://:s3cret@127.0.0.1:9/0",
        CACHESYNC_ES_URL=f"http://127.0.0.1:{port}",
    )
    assert_clean(result, expected)
    assert "s3cret" not in result.stdout + result.stderr
