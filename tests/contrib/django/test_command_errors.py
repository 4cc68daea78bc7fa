"""``manage.py cachesync_*`` answer bad input as the standalone command does: one line, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.contrib.django.conftest import ROOT, django_env


def manage(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "cs_dj_syntax.py").write_text("def broken(:\n")
    env = django_env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    return subprocess.run(
        [sys.executable, "-m", "django", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("cachesync_verify", "--sample", "-5"), "argument --sample: must be >= 1, got -5"),
        (
            ("cachesync_reindex", "Article", "--batch-size", "0"),
            "argument --batch-size: must be >= 1",
        ),
        (("cachesync_relay", "--poll-interval", "0"), "argument --poll-interval: must be > 0"),
        (("cachesync_dlq", "list", "--since", "soon"), "expected an ISO 8601 time"),
        (
            ("cachesync_listen", "--models", "cs_dj_syntax"),
            "cannot import 'cs_dj_syntax': SyntaxError",
        ),
        (
            ("cachesync_retry", "--models", "cs_dj_missing"),
            "no module named 'cs_dj_missing'",
        ),
    ],
    ids=lambda v: v[0] if isinstance(v, tuple) else None,
)
def test_bad_input_is_one_message_and_exit_status_2(
    tmp_path: Path, args: tuple[str, ...], expected: str
) -> None:
    result = manage(tmp_path, *args)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert expected in result.stderr, output
    assert "Traceback" not in output


def test_a_config_file_under_manage_py_is_checked(tmp_path: Path) -> None:
    config = tmp_path / "cachesync.toml"
    config.write_text("colour = 'red'\n")
    result = manage(tmp_path, "cachesync_status", "--config", str(config))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"config file {config}: unknown key 'colour'" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
